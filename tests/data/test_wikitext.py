"""WikiText-2 documents as lm-eval sees them, and the data-root error."""

import pytest

from shadow_sweep.data.root import DataRootError
from shadow_sweep.data.wikitext import load_wikitext


def test_test_split_has_the_62_articles_of_the_document_level_set(data_root):
    docs = load_wikitext(data_root)
    assert len(docs) == 62
    assert docs[0].page.startswith(" = Robert Boulter = ")
    assert all(d.page.lstrip("\n").startswith(" = ") for d in docs)
    assert " @-@ " in docs[0].page and " @-@ " not in docs[0].text  # lm-eval's detokenizer applied
    raw = (data_root / "wikitext-2-raw/wiki.test.raw").read_text()
    joined = "\n".join(d.page for d in docs)
    assert raw.endswith(joined) and not raw[:-len(joined)].strip()  # nothing but the leading blank line lost


def test_slice_takes_the_first_documents(data_root):
    assert [d.page for d in load_wikitext(data_root, 2)] == [d.page for d in load_wikitext(data_root)[:2]]


def test_missing_data_root_names_the_path_and_the_setting(tmp_path):
    with pytest.raises(DataRootError, match=r"nowhere.*paths\.data_root.*SHADOW_SWEEP_DATA"):
        load_wikitext(tmp_path / "nowhere")


def test_article_heads_are_whole_leading_lines_of_at_least_the_word_budget(data_root):
    whole = load_wikitext(data_root, 6)
    heads = load_wikitext(data_root, 6, max_words=300)
    for doc, head in zip(whole, heads):
        assert doc.page.startswith(head.page)
        assert head.num_words >= 300 or head.page == doc.page
        assert doc.page[len(head.page):len(head.page) + 1] in ("", "\n")  # cut at a line end
        shorter = head.page[:head.page.rstrip("\n").rfind("\n")]
        assert len(shorter.split()) < 300  # one line fewer would miss the budget
