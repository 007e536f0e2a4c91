"""The digits pair a test gives a method that every-method tests build."""


def starts_from_teacher(method: str) -> bool:
    """A method refused unless the student is the teacher's architecture started from its
    weights (l2sp, delta): tests that build every method give it such a pair."""
    from pcbench.methods import get_method

    return getattr(get_method(method), "starts_from_teacher", False)


def started_from_teacher(method: str, teacher: str = "cnn_small") -> tuple[dict, dict]:
    """(template, overrides) of the digits default for `method`; for one that starts from the
    teacher's weights, the pair `teacher` -> itself, started from them."""
    if starts_from_teacher(method):
        return {"method": method, "teacher": teacher, "student": teacher}, {"train.init_from_teacher": True}
    return {"method": method}, {}
