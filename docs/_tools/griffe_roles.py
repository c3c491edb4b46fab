"""A griffe extension for the API reference (mkdocs.yml: mkdocstrings ``extensions``).

Two rewrites of the docstrings' text, for Markdown, before mkdocstrings renders them:

1. Doctest examples (``>>>`` lines and their output, up to the next blank line) outside a
   fenced block become a ``pycon`` fenced block; Markdown would otherwise run them together
   into one paragraph (and read ``[1, 2]`` in an output as a link).
2. The docstrings use Sphinx roles (``:class:`Trainer```, ``:func:`~neuralode.nn.latent_ode_loss```,
``:meth:`with_solve```), which Markdown would print as they are. This extension rewrites each
role into a cross-reference to the object's page in the API reference when the target is a
public name rendered there (a public method only if the page renders it: its own, documented),
and into plain code otherwise (private helpers are not on the site).
"""

from __future__ import annotations

import re

import griffe

PUBLIC_MODULES = ("neuralode", "neuralode.nn", "neuralode.datasets", "neuralode.training")
ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|data|mod|exc|obj):`(~?)([\w.]+)`")


class SphinxRoles(griffe.Extension):
    """Sphinx roles in docstrings become autorefs cross-references or code spans."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        if pkg.name != "neuralode":
            return
        self.pkg = pkg
        # public path of every exported name, and of the object behind it
        self.public: dict[str, dict[str, str]] = {}
        self.canonical: dict[str, str] = {}
        for mod_path in PUBLIC_MODULES:
            mod = pkg if mod_path == "neuralode" else pkg[mod_path.split(".", 1)[1]]
            names = {}
            for name in mod.exports or ():
                name = str(name)
                names[name] = f"{mod_path}.{name}"
                target = mod[name]
                try:
                    target = target.final_target if target.is_alias else target
                except griffe.AliasResolutionError:
                    continue
                self.canonical.setdefault(target.path, f"{mod_path}.{name}")
            self.public[mod_path] = names
        self._walk(pkg)

    # -- rewriting ---------------------------------------------------------------------------

    def _walk(self, obj: griffe.Object) -> None:
        if obj.docstring is not None:
            text = fence_doctests(obj.docstring.value)
            obj.docstring.value = ROLE.sub(lambda m: self._replace(obj, m), text)
        for member in obj.members.values():
            if not member.is_alias:
                self._walk(member)

    def _replace(self, obj: griffe.Object, match: re.Match) -> str:
        tilde, target = match.groups()
        text = target.rsplit(".", 1)[-1] if tilde else target
        path = self._resolve(obj, target)
        return f"[`{text}`][{path}]" if path else f"`{text}`"

    def _resolve(self, obj: griffe.Object, target: str) -> str | None:
        if target in PUBLIC_MODULES:
            return target
        if target.startswith("neuralode."):  # a full path: public, or a private module's
            paths = self._all_public()
            if target in paths:
                return target
            owners = [path for path in paths if target.startswith(path + ".")]
            if owners:  # a member of a public object: the longest public prefix owns it
                owner = max(owners, key=len)
                return self._member(owner, target[len(owner) + 1 :])
            target = target.rpartition(".")[2]  # e.g. neuralode._solvers._base.ButcherTableau
        head, _, rest = target.partition(".")
        for mod_path in self._search_order(obj):
            if head in self.public[mod_path]:
                path = self.public[mod_path][head]
                return self._member(path, rest) if rest else path
        # a method or attribute of the enclosing public class: :meth:`with_solve`
        cls = obj if obj.is_class else obj.parent
        if not rest and cls is not None and cls.is_class and cls.path in self.canonical:
            return self._member(self.canonical[cls.path], head)
        return None

    def _all_public(self) -> list[str]:
        return [path for names in self.public.values() for path in names.values()]

    def _search_order(self, obj: griffe.Object) -> list[str]:
        """The object's own public module first (``neuralode.nn`` for ``neuralode.nn._cnf``),
        then the others."""
        parts = obj.path.split(".")
        own = ".".join(parts[:2]) if len(parts) > 1 else "neuralode"
        own = own if own in self.public else "neuralode"
        return [own] + [m for m in PUBLIC_MODULES if m != own]

    def _member(self, public_path: str, member: str) -> str:
        """``Class.member`` if the class's page renders that member, else the class."""
        mod_path, _, name = public_path.rpartition(".")
        mod = self.pkg if mod_path == "neuralode" else self.pkg[mod_path.split(".", 1)[1]]
        try:
            cls = mod[name].final_target if mod[name].is_alias else mod[name]
        except (KeyError, griffe.AliasResolutionError):
            return public_path
        if "." in member or member not in cls.members:
            return public_path
        found = cls.members[member]
        private = member.startswith("_") and not (member.startswith("__") and member != "__init__")
        if found.is_alias or found.docstring is None or private:
            return public_path
        return f"{public_path}.{member}"


def fence_doctests(text: str) -> str:
    """Wrap each run of doctest lines (from ``>>>`` to the next blank line) in a fence."""
    out: list[str] = []
    in_fence = in_doctest = False
    indent = ""
    for line in text.split("\n"):
        stripped = line.lstrip()
        if in_doctest and not stripped:
            out.append(indent + "```")
            in_doctest = False
        elif not in_doctest and not in_fence and stripped.startswith(">>>"):
            indent = line[: len(line) - len(stripped)]
            out.append(indent + "```pycon")
            in_doctest = True
        elif not in_doctest and stripped.startswith("```"):
            in_fence = not in_fence
        out.append(line)
    if in_doctest:
        out.append(indent + "```")
    return "\n".join(out)
