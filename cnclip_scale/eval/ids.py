"""Ids as the evaluator orders and writes them (kept light: the features→recall path imports no model code)."""


def id_key(x):
    """Sort key for ids: numbers numerically, then strings."""
    s = str(x)
    return (0, int(s), "") if s.isdigit() else (1, 0, s)


def json_id(x):
    """Ids as the seed's tools want them: an int when the id is a plain number (its evaluation rejects strings)."""
    s = str(x)
    return int(s) if s.isdigit() and str(int(s)) == s else s
