"""Workshop helpers: learner copies and catching up."""

from __future__ import annotations

import nbformat

from workbook import workshop


def test_learner_copies_have_no_outputs_and_keep_the_learners_edits(tmp_path):
    done = workshop.learner_copies(tmp_path)
    committed = sorted(p.name for p in workshop.NOTEBOOK_DIR.glob("0*.ipynb"))
    assert done == {"written": committed, "kept": []}
    copy = nbformat.read(tmp_path / committed[0], as_version=4)
    source = nbformat.read(workshop.NOTEBOOK_DIR / committed[0], as_version=4)
    assert [c.source for c in copy.cells] == [c.source for c in source.cells]
    assert any(c.get("outputs") for c in source.cells), "the committed notebook has outputs"
    assert not any(c.get("outputs") or c.get("execution_count") for c in copy.cells)

    (tmp_path / committed[0]).write_text("my edits")
    assert workshop.learner_copies(tmp_path)["kept"] == committed
    assert (tmp_path / committed[0]).read_text() == "my edits"
    assert workshop.learner_copies(tmp_path, force=True)["written"] == committed
