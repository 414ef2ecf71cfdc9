"""Registries: names, aliases, clear errors."""
import pytest

from taidpt.engine.registry import Registry


def test_register_get_and_alias():
    reg = Registry("THING")

    @reg.register(aliases=("Old",))
    class New:
        pass

    assert reg.get("New") is New and reg.get("Old") is New
    assert reg.canonical_name("Old") == "New"
    assert "Old" in reg and "Nope" not in reg
    assert reg.registered_names() == ["New"]


def test_register_without_decorator_and_custom_name():
    reg = Registry("THING")
    reg.register(len, name="length")
    assert reg.get("length") is len


@pytest.mark.parametrize("name", ["New", "Old"])
def test_duplicate_names_and_aliases_are_rejected(name):
    reg = Registry("THING")
    reg.register(object, name="New", aliases=("Old",))
    with pytest.raises(KeyError, match="already registered"):
        reg.register(int, name=name)


def test_unknown_name_lists_choices():
    reg = Registry("TRAINER")
    reg.register(object, name="A", aliases=("a_alias",))
    with pytest.raises(KeyError, match=r"'B' is not a registered TRAINER\. Registered: A; aliases: a_alias"):
        reg.get("B")


def test_reference_aliases_resolve_in_project_registries():
    import taidpt.config  # noqa: F401 - registers everything
    from taidpt.engine.registry import EVALUATOR_REGISTRY, TRAINER_REGISTRY

    assert TRAINER_REGISTRY.canonical_name("ZeroshotCLIP_dense") == "ZeroshotCLIP"
    assert EVALUATOR_REGISTRY.canonical_name("MLClassificationEvaluator") == "MLClassification"
