#!/bin/sh
# Regenerates the bpf2go output and fails if it differs from what is
# committed (the .o and .go must be reproducible with Debian's clang).
set -eu
cd "$(dirname "$0")/internal/object"
go generate ./
git diff --exit-code -- weft_bpfel.go weft_bpfel.o
if git ls-files --others --exclude-standard -- . | grep -q 'weft_bpf'; then
	echo "gen_check: untracked generated files" >&2
	exit 1
fi
echo "gen_check: bpf2go output is reproducible"
