"""Artifacts appear whole under their final names: a reader never finds a part, nor a moment with nothing."""
import threading

from tl_core.artifacts import atomic_directory


def write_model(target, version: str, files: int = 300) -> None:
    with atomic_directory(target) as tmp:
        for number in range(files):
            (tmp / f"variables-{number:03d}").write_text(version)
        (tmp / "saved_model.pb").write_text(version)


def test_a_directory_replaced_again_and_again_is_never_missing_for_a_reader(tmp_path):
    """A champion re-exported while a server reads it (recovery): the old model or the new, whole, at every moment.
    (Removing the old directory and then renaming the new one in left the name missing while the old one was removed:
    a reader polling it saw that within 20 replacements.)"""
    target, seen, stop = tmp_path / "model", [], threading.Event()
    write_model(target, "0")

    def read():
        while not stop.is_set():
            seen.append("there" if (target / "saved_model.pb").exists() else "missing")

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for version in range(1, 21):
            write_model(target, str(version))
    finally:
        stop.set()
        reader.join()
    assert seen and set(seen) == {"there"}, {kind: seen.count(kind) for kind in set(seen)}
    assert (target / "saved_model.pb").read_text() == "20"
    assert [path.name for path in tmp_path.iterdir()] == ["model"]  # nothing left beside it
