"""How generation picks its tokens when a caller asks for more than plain greedy decoding.

`predict`, `eval` and training decode greedily. The server also takes sampling settings
(temperature, top-p) and watches every step: a `StoppingCriteria` that sees each row's new
token can end rows at their own budget or stop string and stream their text, while the
batch goes on for the others. Rows that end early only stop; the rest of the batch is
unchanged, so each row's tokens are those it gets alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

# Colder than this, logits / temperature overflow float32 (NaN probabilities); sampling
# that cold is greedy decoding in the limit, so it decodes greedily.
MIN_SAMPLING_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class Decoding:
    """Sampling settings and a per-step watcher for one `generate` call.

    Attributes:
        temperature: below `MIN_SAMPLING_TEMPERATURE` (0) decodes greedily; above, samples.
        top_p: nucleus sampling mass (1.0: the whole distribution); sampling only.
        watcher: called after every step with the ids so far; returns each row's
            "done" flag (see `transformers.StoppingCriteria`). None: no watcher.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    watcher: StoppingCriteria | None = None

    @property
    def samples(self) -> bool:
        return self.temperature >= MIN_SAMPLING_TEMPERATURE

    def apply(self, config: GenerationConfig) -> dict:
        """Set the sampling fields of a greedy `config`; returns `generate`'s extra kwargs."""
        if self.samples:
            config.do_sample = True
            config.temperature = self.temperature
            config.top_p = self.top_p if self.top_p < 1.0 else None
        if self.watcher is None:
            return {}
        return {"stopping_criteria": StoppingCriteriaList([self.watcher])}


GREEDY = Decoding()
