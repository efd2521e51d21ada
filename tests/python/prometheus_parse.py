"""Parses a Prometheus text exposition (format 0.0.4) from stdin with Prometheus' own Python
client (prometheus_client's text_string_to_metric_families), for
tests/tests/observability.rs, and prints it as one JSON object:

    {"families": [{"name": ..., "type": ..., "samples": [{"name": ..., "labels": {...},
                   "value": ...}]}]}

A text the parser rejects makes it exit 1 with the parser's message on stderr.
"""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families


def main():
    text = sys.stdin.read()
    try:
        families = [
            {
                "name": family.name,
                "type": family.type,
                "samples": [
                    {"name": s.name, "labels": dict(s.labels), "value": s.value}
                    for s in family.samples
                ],
            }
            for family in text_string_to_metric_families(text)
        ]
    except Exception as e:  # the parser raises ValueError and friends
        print(f"prometheus_client rejects the exposition: {e!r}", file=sys.stderr)
        sys.exit(1)
    json.dump({"families": families}, sys.stdout)


if __name__ == "__main__":
    main()
