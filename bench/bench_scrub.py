"""Scrubber recall and precision on a corpus generated at run time (tests/helpers/secret_corpus.py).

Run: ``python bench/bench_scrub.py [SEED] [PER_KIND]`` (defaults 20261201 and 30). Prints recall per kind and per
record field, overall recall, precision, look-alikes damaged and the cost per text and per record; exits 1 when a
target is missed (recall >= 99.5% overall and >= 97% for every kind, look-alikes damaged <= 1%).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from subagents.data.scrub import scrub
from tests.helpers.secret_corpus import KINDS, generate, leaked

TARGET_OVERALL, TARGET_KIND, TARGET_DAMAGED = 0.995, 0.97, 0.01


def main() -> int:
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 20261201
    per_kind = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    samples = generate(seed, per_kind=per_kind)
    total: Counter[str] = Counter()
    caught: Counter[str] = Counter()
    field_total: Counter[str] = Counter()
    field_caught: Counter[str] = Counter()
    redactions = true_redactions = lookalikes = damaged = 0
    misses: dict[str, list[str]] = {}
    damaged_samples: list[str] = []
    chars = 0
    t = time.perf_counter()
    outputs = [scrub(s.text) for s in samples]
    elapsed = time.perf_counter() - t
    for sample, result in zip(samples, outputs, strict=True):
        chars += len(sample.text)
        redactions += sum(result.counts.values())
        for planted in sample.secrets:
            total[planted.kind] += 1
            field_total[sample.field] += 1
            if not leaked(sample.text, result.text, planted.value):
                caught[planted.kind] += 1
                field_caught[sample.field] += 1
                true_redactions += 1
            else:
                misses.setdefault(planted.kind, []).append(result.text)
        for keep in sample.lookalikes:
            lookalikes += 1
            if keep not in result.text:
                damaged += 1
                damaged_samples.append(result.text)
    n_values = sum(total.values())
    print(f"corpus seed={seed}: {len(KINDS)} kinds, {n_values} values, {lookalikes} look-alikes, {len(samples)} texts")
    print(f"scrub: {elapsed:.2f}s, {elapsed / len(samples) * 1e6:.0f} us per text ({chars / len(samples):.0f} chars)")
    worst = []
    for kind in sorted(total):
        rate = caught[kind] / total[kind]
        worst.append((rate, kind))
        print(f"  recall {kind:<28} {caught[kind]:>4}/{total[kind]:<4} {rate:7.2%}")
    print("recall per record field:")
    for name in sorted(field_total):
        print(
            f"  {name:<16} {field_caught[name]:>4}/{field_total[name]:<4} {field_caught[name] / field_total[name]:7.2%}"
        )
    overall = sum(caught.values()) / n_values
    # Precision: redactions that removed a planted value, over all redactions (a value may take several).
    precision = min(1.0, true_redactions / redactions) if redactions else 1.0
    damaged_rate = damaged / lookalikes if lookalikes else 0.0
    print(f"recall overall {overall:.2%}; worst kind {min(worst)[1]} {min(worst)[0]:.2%}")
    print(f"precision {precision:.2%} ({true_redactions} planted values caught, {redactions} redactions)")
    print(f"look-alikes damaged {damaged}/{lookalikes} = {damaged_rate:.2%}")
    for kind, texts in sorted(misses.items()):
        print(f"  missed {kind}: {texts[0][:240]!r}")
    for text in damaged_samples[:10]:
        print(f"  damaged: {text[:200]!r}")
    ok = overall >= TARGET_OVERALL and min(worst)[0] >= TARGET_KIND and damaged_rate <= TARGET_DAMAGED
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
