"""Run an LLM bundle (input_ids + past keys/values -> logits + updated keys/values) in tract."""
from __future__ import annotations

import numpy as np

from t2n.verify import load_tract_model

__all__ = ["LLMBundle"]


class LLMBundle:
    """One loaded bundle; ``step`` runs it on new tokens and the cache of the previous step.

    >>> llm = LLMBundle("out/model/model.nnef.tgz")
    >>> logits, cache = llm.step(prompt_ids, llm.empty_cache())     # prefill, P = 0
    >>> logits, cache = llm.step([[next_id]], cache)                  # decode, S = 1
    """

    def __init__(self, path):
        model = load_tract_model(path)
        self.input_names = [model.input_name(i) for i in range(model.input_count())]
        self.output_names = [model.output_name(i) for i in range(model.output_count())]
        self.runnable = model.into_runnable()
        self._empty = [self._empty_like(self.runnable.input_fact(i))
                       for i in range(1, len(self.input_names))]

    @staticmethod
    def _empty_like(fact) -> np.ndarray:
        """A zero-length past for a cache input fact such as ``1,2,P,16,f32``."""
        *dims, dtype = str(fact).split(",")
        shape = [int(d) if d.isdigit() else 0 for d in dims]
        return np.zeros(shape, dtype={"f32": np.float32, "f16": np.float16}[dtype])

    def empty_cache(self) -> list[np.ndarray]:
        return [a.copy() for a in self._empty]

    def step(self, input_ids, cache: list[np.ndarray]):
        """(logits, new cache) for ``input_ids`` [1, S] (int64) after ``cache``."""
        ids = np.asarray(input_ids, dtype=np.int64)
        outs = self.runnable.run([ids, *cache])
        outs = [o.to_numpy() for o in outs]
        return outs[0], outs[1:]

    def generate(self, prompt_ids, max_new_tokens: int) -> list[int]:
        """Greedy decoding: the prompt in one step, then one token per step."""
        if max_new_tokens <= 0:
            return []
        logits, cache = self.step(np.asarray(prompt_ids).reshape(1, -1), self.empty_cache())
        tokens = [int(np.argmax(logits[0, -1]))]
        while len(tokens) < max_new_tokens:
            logits, cache = self.step([[tokens[-1]]], cache)
            tokens.append(int(np.argmax(logits[0, -1])))
        return tokens
