"""WikiText-2 raw test as lm-eval's `wikitext` task sees it: one document per article.

Articles are split at top-level headings (` = Title = `) the way the hub data set
`EleutherAI/wikitext_document_level` builds its `page` field; the text scored is
lm-eval's `wikitext_detokenizer(page)` and words are counted on the raw page.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer

from shadow_sweep.data.root import data_file
from shadow_sweep.data.tasks import CALIBRATION, SplitRule, partition

WIKITEXT = "wikitext"
WIKITEXT_TEST = "wikitext-2-raw/wiki.test.raw"


@dataclass(frozen=True)
class WikiDocument:
    page: str  # raw article text, as in the hub data set

    @property
    def text(self) -> str:
        return wikitext_detokenizer({"page": self.page})

    @property
    def num_words(self) -> int:
        return len(re.split(r"\s+", self.page))

    @property
    def num_bytes(self) -> int:
        return len(self.page.encode("utf-8"))


def _is_article_heading(line: str) -> bool:
    stripped = line.replace("= = =", "===").replace("= =", "==").strip()
    return stripped.startswith("= ") and stripped.endswith(" =")


def split_articles(raw: str) -> list[str]:
    pages, lines = [], []
    for line in raw.split("\n"):
        if _is_article_heading(line):
            page = "\n".join(lines)
            if page.strip():
                pages.append(page)
            lines = []
        lines.append(line)
    pages.append("\n".join(lines))
    return pages


def article_head(page: str, max_words: int) -> str:
    """The page's lines up to and including the first at which `max_words` words are reached
    (an article's lead: whole lines, so words, bytes and detokenisation stay consistent)."""
    lines = page.split("\n")
    for end in range(1, len(lines) + 1):
        head = "\n".join(lines[:end])
        if len(re.split(r"\s+", head)) >= max_words:
            return head
    return page


def load_wikitext(data_root: str | Path, max_documents: int | None = None, part: str | None = None,
                  rule: SplitRule = SplitRule(), max_words: int | None = None) -> list[WikiDocument]:
    """The test articles in file order; `part` = calibration / evaluation keeps only the
    articles of that part of the seeded split (see `shadow_sweep.data.tasks.partition`);
    `max_words` cuts every article to its head (`article_head`)."""
    pages = split_articles(data_file(data_root, WIKITEXT_TEST).read_text(encoding="utf-8"))
    if part is not None:
        calibration_ids, evaluation_ids = partition(WIKITEXT, len(pages), rule)
        pages = [pages[i] for i in (calibration_ids if part == CALIBRATION else evaluation_ids)]
    pages = pages[:max_documents]
    return [WikiDocument(page if max_words is None else article_head(page, max_words)) for page in pages]
