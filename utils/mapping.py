"""Nested mappings (configs, loaded YAML) as flat key -> value tables."""


def flatten(node, prefix=""):
    """{'SECTION.KEY': value} of a (nested) config mapping (a CfgNode or a loaded YAML dict)."""
    out = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(flatten(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out
