#!/usr/bin/env bash
# Prints command N (1 or 2) of the README's "Two commands" block, exactly as written there
# (the trailing `# comment` removed). CI runs what this prints, so a README edit that breaks
# either command breaks CI.
#   scripts/readme-command.sh 1   -> the command that serves the demo
#   scripts/readme-command.sh 2   -> the command that runs every test
set -euo pipefail
n="${1:?usage: readme-command.sh 1|2}"
readme="$(dirname "$0")/../README.md"
awk -v n="$n" '
  /^## Two commands/ { section = 1; next }
  section && /^## / { exit }
  section && /^```/ { if (inblock) exit; inblock = 1; next }
  inblock && NF { seen++; if (seen == n) { sub(/[ \t]+#.*$/, ""); print; found = 1; exit } }
  END { if (!found) exit 1 }
' "$readme" || { echo "README.md has no command $n in its \"Two commands\" block" >&2; exit 1; }
