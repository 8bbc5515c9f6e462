#!/usr/bin/env python3
"""Runs the README's "Try it" walkthrough, as a newcomer would paste it, against the running local stack
(`make up`), and checks every outcome the README shows. CI runs it with ext-authz's clock outside business
hours (EDGEMESH_CLOCK), so that the walkthrough is shown to hold at any hour.

The walkthrough is the first ```sh block under "## Try it". Its commands run in order in one bash
session (variables carry over), each group of command lines between comment lines as one step. A comment
line `# → TEXT` after a step is an outcome the step's output must show: TEXT's pieces between `…` appear
in the output, in order (a trailing `  (…)` is commentary). `# outside business hours → TEXT` is checked
too (the clock is outside them); `# in business hours → TEXT` is not. A step whose first line ends with
`# (runs until stopped)` is not run. The walkthrough's user, device and device directory are renamed
(alice, pi-1, /tmp/pi-1), so that a second run on the same stack starts from scratch as the first did.

usage: check-readme.py [README.md]
"""

import re
import shutil
import subprocess
import sys
import tempfile
import uuid

ALWAYS = "# → "
OUTSIDE = "# outside business hours → "
INSIDE = "# in business hours → "
SKIP = "# (runs until stopped)"


def walkthrough(readme):
    text = open(readme, encoding="utf-8").read()
    section = text.split("\n## Try it\n", 1)[1]
    block = re.search(r"```sh\n(.*?)\n```", section, re.S)
    if not block:
        sys.exit("check-readme: no ```sh block under ## Try it")
    return block.group(1)


def steps(block):
    """[(command lines, [expected texts])], in order."""
    out = []
    command, expected = [], []
    for line in block.split("\n"):
        stripped = line.strip()
        if stripped.startswith(ALWAYS) or stripped.startswith(OUTSIDE):
            if not command and not out:
                sys.exit(f"check-readme: an outcome before any command: {line}")
            expected.append(stripped.split("→ ", 1)[1])
            continue
        if stripped.startswith(INSIDE):
            continue
        if stripped.startswith("#") or not stripped:
            if command:
                out.append((command, expected))
                command, expected = [], []
            elif expected and out:
                out[-1][1].extend(expected)
                expected = []
            continue
        if expected:
            # An outcome line between command lines belongs to the command before it.
            out.append((command, expected))
            command, expected = [], []
        command.append(line)
    if command or expected:
        out.append((command, expected))
    return [(c, e) for c, e in out if c]


def pieces(expected):
    expected = re.sub(r"  \(.*\)$", "", expected)
    return [p.strip() for p in expected.split("…") if p.strip()]


def holds(expected, output):
    at = 0
    for piece in pieces(expected):
        found = output.find(piece, at)
        if found < 0:
            return piece
        at = found + len(piece)
    return None


def main():
    readme = sys.argv[1] if len(sys.argv) > 1 else "README.md"
    suffix = uuid.uuid4().hex[:8]
    work = tempfile.mkdtemp(prefix="edgemesh-readme-")
    block = walkthrough(readme)
    renamed = (
        block.replace("/tmp/pi-1", f"{work}/pi-1")
        .replace("pi-1", f"pi-{suffix}")
        .replace("alice", f"alice-{suffix}")
    )
    failures = 0
    shell = subprocess.Popen(
        ["bash", "--norc", "--noprofile"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    marker = f"__step_done_{suffix}__"
    ran = checked = 0
    for command, expected in steps(renamed):
        if command[0].rstrip().endswith(SKIP):
            print(f"check-readme: skipped (runs until stopped): {command[0].strip()}")
            continue
        ran += 1
        script = "\n".join(command)
        shell.stdin.write("{\n" + script + "\n} 2>&1\n" + f"echo; echo {marker} $?\n")
        shell.stdin.flush()
        output = []
        for line in shell.stdout:
            if line.startswith(marker):
                status = int(line.split()[1])
                break
            output.append(line)
        else:
            sys.exit("check-readme: the shell ended early:\n" + "".join(output))
        output = "".join(output)
        shown = command[0].strip()[:100]
        for outcome in expected:
            checked += 1
            missing = holds(outcome, output)
            if missing is not None:
                failures += 1
                print(f"check-readme: FAILED: {shown}\n  shows: {outcome}\n  missing: {missing}\n"
                      f"  output:\n{output}")
        if status != 0 and not expected:
            failures += 1
            print(f"check-readme: FAILED (exit status {status}): {shown}\n{output}")
    shell.stdin.close()
    shell.wait()
    shutil.rmtree(work, ignore_errors=True)
    if failures:
        sys.exit(f"check-readme: {failures} of the README's outcomes do not hold")
    print(f"check-readme: {ran} walkthrough steps ran, {checked} shown outcomes hold")


if __name__ == "__main__":
    main()
