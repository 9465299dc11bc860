"""Validates JSON files against smp's schemas (Draft 2020-12).

usage: validate_json.py SCHEMAS_DIR SCHEMA_NAME FILE...   (e.g. schemas plan plan.json)
Prints one line per file; exits 1 when any file does not validate.
"""
import json
import pathlib
import sys

from jsonschema import Draft202012Validator, RefResolver


def main():
    schemas_dir, name, files = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    store = {}
    for p in schemas_dir.glob("*.schema.json"):
        s = json.loads(p.read_text())
        Draft202012Validator.check_schema(s)
        store[s["$id"]] = s
    schema = json.loads((schemas_dir / f"{name}.schema.json").read_text())
    validator = Draft202012Validator(schema, resolver=RefResolver.from_schema(schema, store=store))
    bad = 0
    for f in files:
        errors = sorted(validator.iter_errors(json.loads(pathlib.Path(f).read_text())), key=lambda e: list(e.path))
        if errors:
            bad += 1
            for e in errors[:5]:
                print(f"{f}: {'/'.join(map(str, e.path))}: {e.message[:300]}")
        else:
            print(f"{f}: valid")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
