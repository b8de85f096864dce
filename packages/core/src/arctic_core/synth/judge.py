"""LLM-as-judge: a rubric prompt, sent through the generation backends, scores (prompt, answer).

`[clean.judge] rubric` is a Jinja template over `prompt` and `answer`; it is sent as the user
message, answered greedily in at most `max_tokens` tokens, and the first number in the reply
is the score (none: the row has no score). `arctic data clean` drops rows under `threshold`;
`arctic data generate` with `output = "preference"` ranks a prompt's answers by it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

from arctic_core.config import TrainerConfig
from arctic_core.errors import RecipeError
from arctic_core.synth.endpoint import Sampling
from arctic_core.synth.prompts import Prompt

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def first_number(text: str) -> float | None:
    """The first number in `text`, if any."""
    match = _NUMBER.search(text)
    return float(match.group()) if match else None


class Judge:
    """Scores (prompt, answer) pairs with `[clean.judge]`."""

    def __init__(self, config: TrainerConfig, cache: Path, log: Callable[[str], None] = print) -> None:
        import jinja2

        from arctic_core.synth.backends import make_backend
        from arctic_core.synth.local import judge_config

        judge = config.clean.judge
        if not judge.rubric:
            raise RecipeError(
                "the judge needs a rubric (a Jinja template over prompt and answer)",
                path="clean.judge.rubric",
            )
        try:
            self.template = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(judge.rubric)
        except jinja2.TemplateSyntaxError as exc:
            raise RecipeError(f"not a Jinja template: {exc}", path="clean.judge.rubric") from None
        self.local = judge.backend != "openai"
        self.tokenizer = None
        judged = judge_config(config, judge.model) if self.local else config
        if self.local:
            from arctic_core.data.tokenizer import load_tokenizer

            self.tokenizer = load_tokenizer(judged)
        sampling = Sampling(max_tokens=judge.max_tokens)
        self.backend = make_backend(
            judge.backend, judged, sampling, judge.endpoint, cache, "clean.judge", self.tokenizer, log
        )

    def scores(self, pairs: Sequence[tuple[str, str]], batch_size: int = 16) -> list[float | None]:
        """The judge's score of each (prompt, answer)."""
        return [score for score, _ in self.verdicts(pairs, batch_size)]

    def verdicts(
        self, pairs: Sequence[tuple[str, str]], batch_size: int = 16
    ) -> list[tuple[float | None, str]]:
        """The judge's (score, reply) for each (prompt, answer)."""
        from arctic_core.synth.prompts import prompt_ids

        prompts = []
        for prompt, answer in pairs:
            messages = [{"role": "user", "content": self.template.render(prompt=prompt, answer=answer)}]
            ids = prompt_ids(messages, self.tokenizer) if self.tokenizer is not None else None
            prompts.append(Prompt(messages=messages, ids=ids))
        out: list[tuple[float | None, str]] = []
        for start in range(0, len(prompts), batch_size):
            answers = self.backend.answer(prompts[start : start + batch_size], seed=start)
            out += [(first_number(a[0].text), a[0].text) for a in answers]
        return out

    def close(self) -> None:
        """Release the backend."""
        self.backend.close()
