import pytest

from nodule_net.files import atomic_path, write_text_atomic


def test_atomic_path_replaces_on_success(tmp_path):
    target = tmp_path / "sub" / "out.json"
    write_text_atomic(target, "first")
    write_text_atomic(target, "second")
    assert target.read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


def test_atomic_path_keeps_old_content_on_failure(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("complete old file")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half of a new fi")
            raise RuntimeError("killed half-way")
    assert target.read_text() == "complete old file"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]
