"""How a loglikelihood request (context, continuation) becomes tokens, exactly as lm-eval 0.4's
HFLM makes them: one rule shared by calibration (traces score the gold answer of the request
lm-eval would build) and evaluation (`evaluation.lm.SparseLM` delegates to it).
"""

from typing import Optional

from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import _add_special_kwargs, has_bos_prefix
from transformers import PreTrainedTokenizerBase


class RequestEncoder:
    backend = "causal"  # TemplateLM._encode_pair: encode context + continuation whole, then split

    def __init__(self, tokenizer: PreTrainedTokenizerBase, add_bos_token: Optional[bool] = None):
        self.tokenizer = tokenizer
        self.add_bos_token = add_bos_token

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """HFLM's rule: BOS when the tokenizer has one, else EOS."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None) -> list[int]:
        """HFLM's rule: explicit flag, else `add_bos_token`, else the tokenizer's own default;
        no second BOS when the string already starts with one."""
        special = _add_special_kwargs(add_special_tokens, self.add_bos_token)
        if add_special_tokens is None and has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            special["add_special_tokens"] = False
        return self.tokenizer.encode(string, **special)

    def encode_request(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context tokens, continuation tokens) as TemplateLM.loglikelihood makes them: lm-eval's
        own pair rule (trailing spaces move to the continuation), the prefix token for an
        empty context."""
        if context:
            return TemplateLM._encode_pair(self, context, continuation)
        tokens = self.tok_encode(continuation, add_special_tokens=False)
        return ([self.prefix_token_id], tokens) if tokens[:1] != [self.prefix_token_id] else (tokens[:1], tokens[1:])
