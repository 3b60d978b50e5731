"""The modalities of a sample and the missing-modality settings built from them.

A dataset declares its modalities (``data.datasets.bases.ReIDDataset.modalities``; RGB, NI and TI unless it
says otherwise); batches, models, transforms and evaluation follow that order. Each modality has a one-letter
code (its first letter, lower case): ``TEST.MISS`` names the modalities to zero with those letters, in the
dataset's order (``rt``: RGB and TI missing), ``all`` asks for the full input and every setting that
leaves at least one modality, and ``any`` for every query setting against every gallery setting.
"""
from itertools import combinations

MODALITIES = ("RGB", "NI", "TI")

# How the papers' tables name the modalities (NI / TI are the folder names of RGBNT201).
_TABLE_NAMES = {"NI": "NIR", "TI": "TIR"}


def modality_code(name):
    """The letter ``TEST.MISS`` names modality ``name`` with (its first letter, lower case)."""
    return name[0].lower()


def check_modalities(modalities, what):
    """Refuse (ValueError naming ``what``) a modality list that is empty, repeats a name, holds a name that
    is not a non-empty string, or gives two modalities the same letter (TEST.MISS could not tell them apart)."""
    mods = list(modalities)
    if not mods or not all(isinstance(m, str) and m and m[0].isalpha() for m in mods):
        raise ValueError(f"{what} must name one or more modalities, each starting with a letter, got {mods}")
    if len(set(mods)) != len(mods):
        raise ValueError(f"{what} names a modality twice: {mods}")
    codes = [modality_code(m) for m in mods]
    clash = sorted({m for m in mods if codes.count(modality_code(m)) > 1})
    if clash:
        raise ValueError(f"{what}: the modalities {clash} start with the same letter, which TEST.MISS names "
                         f"them by; rename one")
    return tuple(mods)


def miss_settings(modalities=MODALITIES):
    """``{code: missing modalities}`` for every non-empty proper subset of ``modalities``, smallest first, in
    the dataset's order: for RGB / NI / TI the papers' six settings r, n, t, rn, rt, nt."""
    mods = tuple(modalities)
    out = {}
    for size in range(1, len(mods)):
        for subset in combinations(mods, size):
            out["".join(modality_code(m) for m in subset)] = subset
    return out


def miss_choices(modalities=MODALITIES):
    """Every value ``TEST.MISS`` accepts for ``modalities``: empty (full input), a setting, 'all' (the full
    input and each setting) or 'any' (every query setting against every gallery setting)."""
    return ("",) + tuple(miss_settings(modalities)) + ("all", "any")


def miss_label(code, modalities=MODALITIES):
    """A setting's column name in the missing-modality table: 'Full' or e.g. 'M (RGB+NIR)'."""
    if code in ("", "none"):
        return "Full"
    return "M (" + "+".join(_TABLE_NAMES.get(m, m) for m in miss_settings(modalities)[code]) + ")"
