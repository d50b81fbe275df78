"""A continuation's generated part, scored alone beside the whole utterance.

The whole-utterance scores of a continuation include its prompt, which the model was given. The
generated part is each row's audio after the prompt's samples (the ground truth's and the
resynthesis's too, so the rows stay comparable), scored for WER against the reference words that
follow the prompt and for SIM against the prompt audio.

Where the reference splits (`split_reference`): the evaluation's ASR hears the ground truth in two
pieces, its prompt audio and the rest (the ground truth row's generated part). The split is the
number k of reference words that best explains both: the least word edit distance of ref[:k] to
what was heard in the prompt plus that of ref[k:] to what was heard after it. Of equal distance,
the k nearest where an even speaking rate puts the boundary (the reference's words times the
prompt's share of the ground truth's duration), then the smaller k. Only the ground truth and the
ASR enter, never the model under test, so every model is scored against the same words.
"""

from __future__ import annotations

from trainer.eval import stats


def prefix_distances(ref: list[str], heard: list[str]) -> list[int]:
    """Word edit distance of every prefix ref[:k] (k = 0 .. len(ref)) to `heard`."""
    column = list(range(len(ref) + 1))  # distances to heard[:0]: k deletions
    for j, word in enumerate(heard, 1):
        previous, column = column, [j]
        for k in range(1, len(ref) + 1):
            column.append(min(previous[k] + 1, column[k - 1] + 1, previous[k - 1] + (ref[k - 1] != word)))
    return column


def split_reference(ref: list[str], heard_prompt: list[str], heard_rest: list[str], share: float) -> int:
    """How many of the reference words `ref` the prompt holds: the k whose ref[:k] and ref[k:] are
    nearest (word edit distance, summed) to what the ASR heard in the ground truth's prompt and
    after it; ties to the k nearest len(ref) * `share` (the prompt's share of the duration), then
    to the smaller. A word the prompt cuts in half goes to the side where it was heard; heard on
    both sides or neither, the tie decides."""
    before = prefix_distances(ref, heard_prompt)
    after = prefix_distances(ref[::-1], heard_rest[::-1])[::-1]  # after[k]: ref[k:] to heard_rest
    even = len(ref) * share
    return min(range(len(ref) + 1), key=lambda k: (before[k] + after[k], abs(k - even), k))


def summarize_generated(rows: list[dict], summary: dict) -> None:
    """Adds `generated` (pooled and mean WER, mean SIM, their intervals, utterances) to every summary entry
    whose rows carry generated-part scores; WER is None where no generated part has a word."""
    for name, entry in summary.items():
        parts = [r[name]["generated"] for r in rows if "generated" in r.get(name, {})]
        if not parts:
            continue
        generated = stats.describe(parts)
        if not sum(p["words"] for p in parts):  # with no reference word, no WER and no interval of it
            generated = {"wer": None, "sim": generated["sim"], "utterances": len(parts)}
        entry["generated"] = generated
