#!/usr/bin/env python3
"""Mutation testing of the Rego policies: every single change of an operator or a constant must make a
Rego unit test fail.

Each mutant is one change to one policy file (not its tests): a comparison operator swapped
(>= > <= < == !=), a number moved by one (a decimal by 0.1), a boolean flipped, a string constant altered, an element dropped from a set literal. Each is
run with `edgemeshctl policy test` in a copy of policies/; a mutant that compiles and passes every
test survived, and the run fails, naming it. Messages (strings with a space: reasons) are not mutated:
what they say is pinned by the tests that read them, not by this script.

Usage: scripts/mutate-policies.py [--ctl target/debug/edgemeshctl] [--policies policies]
"""

import argparse
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

COMPARISONS = {">=": ">", ">": ">=", "<=": "<", "<": "<=", "==": "!=", "!=": "=="}
TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|>=|<=|==|!=|(?<![:<>=!])[<>](?!=)|\b\d+(?:\.\d+)?\b|\btrue\b|\bfalse\b')


def code_part(line):
    """The line up to its comment (a '#' outside a string)."""
    in_string = False
    for i, c in enumerate(line):
        if c == '"' and (i == 0 or line[i - 1] != "\\"):
            in_string = not in_string
        elif c == "#" and not in_string:
            return line[:i]
    return line


def mutants(text):
    """(description, mutated text) for every single change."""
    lines = text.split("\n")
    for n, line in enumerate(lines):
        code = code_part(line)
        if code.lstrip().startswith("import") or code.lstrip().startswith("package"):
            continue
        for m in TOKEN.finditer(code):
            token = m.group(0)
            replacements = []
            if token in COMPARISONS:
                replacements.append(COMPARISONS[token])
            elif token in ("true", "false"):
                replacements.append("false" if token == "true" else "true")
            elif token.startswith('"'):
                value = token[1:-1]
                if " " in value or "%" in value or value == "":
                    continue
                replacements.append('"' + value + 'x"')
            else:
                if "sprintf" in code:
                    continue
                if "." in token:
                    replacements += [repr(round(float(token) + d, 6)) for d in (0.1, -0.1)]
                else:
                    replacements += [str(int(token) + d) for d in (1, -1)]
            for replacement in replacements:
                changed = code[: m.start()] + replacement + code[m.end():] + line[len(code):]
                mutated = lines[:n] + [changed] + lines[n + 1:]
                yield f"line {n + 1}: {token} -> {replacement}", "\n".join(mutated)
        # Each element of a set literal of strings, dropped.
        for s in re.finditer(r"\{([^{}]*)\}", code):
            elements = [e.strip() for e in s.group(1).split(",")]
            if len(elements) < 2 or not all(re.fullmatch(r'"[^"]*"', e) for e in elements):
                continue
            for i, element in enumerate(elements):
                rest = ", ".join(elements[:i] + elements[i + 1:])
                changed = code[: s.start()] + "{" + rest + "}" + code[s.end():] + line[len(code):]
                mutated = lines[:n] + [changed] + lines[n + 1:]
                yield f"line {n + 1}: {element} dropped from its set", "\n".join(mutated)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    root = pathlib.Path(__file__).resolve().parent.parent
    parser.add_argument("--ctl", default=str(root / "target/debug/edgemeshctl"))
    parser.add_argument("--policies", default=str(root / "policies"))
    args = parser.parse_args()
    policies = pathlib.Path(args.policies)

    baseline = subprocess.run([args.ctl, "policy", "test", "--policy-dir", str(policies)], capture_output=True, text=True)
    if baseline.returncode != 0:
        sys.exit(f"mutate-policies: the policies' tests fail unmutated:\n{baseline.stdout}{baseline.stderr}")

    total, killed, broken, survivors = 0, 0, 0, []
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp) / "policies"
        shutil.copytree(policies, work)
        for source in sorted(policies.glob("*.rego")):
            if source.name.endswith("_test.rego"):
                continue
            original = source.read_text()
            for what, text in mutants(original):
                total += 1
                (work / source.name).write_text(text)
                run = subprocess.run([args.ctl, "policy", "test", "--policy-dir", str(work)], capture_output=True, text=True)
                if run.returncode == 0:
                    survivors.append(f"{source.name} {what}")
                elif run.returncode == 1:
                    killed += 1
                else:
                    broken += 1  # does not compile: no test needed to notice
            (work / source.name).write_text(original)

    print(f"mutate-policies: {total} mutants of the policies: {killed} failed a test, {broken} did not compile, {len(survivors)} survived")
    if survivors:
        print("changes no Rego test notices:\n  " + "\n  ".join(survivors), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
