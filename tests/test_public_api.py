"""The curated public API stays small and importable."""

import batchml


def test_all_is_curated_and_importable() -> None:
    assert sorted(batchml.__all__) == batchml.__all__
    assert len(batchml.__all__) <= 25
    for name in batchml.__all__:
        assert getattr(batchml, name) is not None


def test_every_error_derives_from_base_and_a_builtin() -> None:
    import inspect

    from batchml import errors

    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass)
               if issubclass(c, errors.BatchMLError) and c is not errors.BatchMLError]
    assert len(classes) >= 10
    for cls in classes:
        builtin_bases = [b for b in cls.__mro__ if b.__module__ == "builtins"
                         and b not in (Exception, BaseException, object)]
        assert builtin_bases, cls
        assert isinstance(cls.transient, bool)


def test_transient_marks() -> None:
    from batchml import errors

    assert errors.is_transient(errors.CatalogBusy("x"))
    assert errors.is_transient(errors.StorageUnavailable("x"))
    assert not errors.is_transient(errors.ChecksumMismatch("x"))
    assert not errors.is_transient(errors.SchemaMismatch("x"))
    assert errors.is_transient(ConnectionResetError())
    assert not errors.is_transient(KeyError("x"))
