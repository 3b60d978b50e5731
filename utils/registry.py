"""A table of named specs of one kind (datasets, backbones, branches), each registered once."""


class Registry:
    """Specs registered by name (and aliases). A name registered again by the module that registered it
    first replaces the entry (the module was loaded again); by another module it is an error naming both.

    Args:
        kind: what the entries are, for error messages ('dataset', 'backbone', 'branch').
    """

    def __init__(self, kind):
        self.kind = kind
        self._entries = {}   # name -> (entry, registering module)
        self._aliases = {}   # name or alias -> name

    def register(self, name, entry, source, aliases=()):
        """Register ``entry`` under ``name`` and ``aliases``; ``source`` is the registering module's name."""
        for key in (name, *aliases):
            owner = self._aliases.get(key)
            if owner is not None and (owner != name or self._entries[owner][1] != source):
                raise ValueError(f"{self.kind} name {key!r} is already registered by {self._entries[owner][1]}")
        for key in (name, *aliases):
            self._aliases[key] = name
        self._entries[name] = (entry, source)
        return entry

    def get(self, name):
        """The entry of ``name`` or one of its aliases; None when there is none."""
        return self._entries[self._aliases[name]][0] if name in self._aliases else None

    def names(self, aliases=False):
        """Every registered name (with the aliases when asked), in registration order."""
        return tuple(self._aliases) if aliases else tuple(self._entries)

    def entries(self):
        return [entry for entry, _ in self._entries.values()]
