"""The paper's experiments, one module each, run from the repository root as

    python -m experiments.<name> --preset {smoke,small,paper} [--out DIR] [--seed N]
                                 [--no-progress] [--fresh] [--set KEY=VALUE ...]

- ``spirals``: Table 2 and Figure 8, the latent ODE against RNNs on irregular spirals
  (``make demo`` runs its ``small`` preset);
- ``mnist``: Table 1, ODE-Net, RK-Net, ResNet and an MLP on MNIST;
- ``nfe_study``: Figure 3, NFE against error, time and backward NFE (``--from`` an mnist run);
- ``density_matching``: Figure 4, planar CNF against planar NF;
- ``max_likelihood``: Figure 5, CNFs fitted to Two Circles and Two Moons;
- ``reproduce``: runs every experiment's preset and writes ``docs/reproduction.md``.

**Configuration.** Every experiment has the presets ``smoke`` (seconds, for the tests),
``small`` (minutes on a 2-core CPU, the numbers of ``docs/reproduction.md``) and ``paper`` (the
paper's settings, for a GPU), each a flat dict of settings (``PRESETS``). ``--set key=value``
overrides one entry and is typed by the preset's value: ``--set steps=500``, ``--set lr=3e-3``,
``--set sizes=2,8`` (a list), ``--set resample=false``, ``--set groups=none``; an unknown key is
refused with the list of keys. There are no other configuration flags.

**Run folders.** A run writes ``config.json``, ``metrics.jsonl``, ``summary.json``, plots and
one sub-folder per trained model (a ``neuralode.training.Trainer`` run with its checkpoints).
Running the same command again resumes; a resume with other settings is refused; ``--fresh``
moves the old folder aside and starts over.

The modules use only the public API of ``neuralode``; ``_common.py`` (run folders, the command
line, plotting) and ``_report.py`` (machine information, number and table formatting) are the
helpers they share.
"""
