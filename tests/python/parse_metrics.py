"""Parses Prometheus text exposition from stdin with the reference parser of the
`prometheus-client` package and prints what it found as JSON.

A parse error (malformed line, bad escaping, a sample outside its family) exits non-zero with
the parser's message. Beyond parsing, it checks the conventions Sluice promises: metric and
label names are valid, every family has HELP and TYPE, counters' samples end in `_total`, and
no family appears twice.
"""

import json
import re
import sys

from prometheus_client.parser import text_string_to_metric_families

NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def main() -> int:
    text = sys.stdin.read()
    families = {}
    problems = []
    typed = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)
    helped = set(re.findall(r"^# HELP (\S+) ", text, re.M))
    seen = set()
    for name, _ in typed:
        if name in seen:
            problems.append(f"family {name} declared twice")
        seen.add(name)
        if name not in helped:
            problems.append(f"family {name} has no HELP")
    for family in text_string_to_metric_families(text):
        samples = []
        for sample in family.samples:
            if not NAME.match(sample.name):
                problems.append(f"bad metric name {sample.name!r}")
            for label in sample.labels:
                if not LABEL.match(label):
                    problems.append(f"bad label name {label!r} on {sample.name}")
            if family.type == "counter" and not sample.name.endswith("_total"):
                problems.append(f"counter sample {sample.name} lacks _total")
            samples.append({"name": sample.name, "labels": sample.labels, "value": sample.value})
        families[family.name] = {"type": family.type, "help": family.documentation, "samples": samples}
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    print(json.dumps(families))
    return 0


if __name__ == "__main__":
    sys.exit(main())
