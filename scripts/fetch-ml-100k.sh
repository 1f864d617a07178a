#!/usr/bin/env bash
# MovieLens 100k, a third dataset for the recommender's quality floor, one
# that the shared folder does not have and that no one tuned the defaults
# on until it failed them: GroupLens' 100,000 ratings (943 users, 1,682
# movies) in the `ml-udata` format (`user<TAB>item<TAB>rating<TAB>timestamp`).
# PyPI is the one place this machine can fetch it from: RecBole's wheel
# carries it as recbole/dataset_example/ml-100k/ml-100k.inter (the same rows
# in u.data's order, with a header). It is written under target/ and never
# committed: its licence allows research use, not redistribution.
#
# Usage: scripts/fetch-ml-100k.sh DIR [PIP]   (writes DIR/u.data; PIP defaults to pip3)
set -euo pipefail

DIR="${1:?usage: scripts/fetch-ml-100k.sh DIR [PIP]}"
PIP="${2:-pip3}"
RECBOLE=recbole==1.2.1
WHEEL_SHA256=9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407
UDATA_SHA256=06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490

if [ -f "$DIR/u.data" ] && echo "$UDATA_SHA256  $DIR/u.data" | sha256sum --check --status; then
  exit 0
fi
mkdir -p "$DIR"
"$PIP" download --quiet --no-deps --only-binary :all: "$RECBOLE" -d "$DIR" ||
  { echo "error: could not download $RECBOLE from PyPI (it carries MovieLens 100k)" >&2; exit 1; }
WHEEL="$DIR/recbole-1.2.1-py3-none-any.whl"
echo "$WHEEL_SHA256  $WHEEL" | sha256sum --check --status ||
  { echo "error: $WHEEL does not have the expected SHA-256 $WHEEL_SHA256" >&2; exit 1; }
python3 - "$WHEEL" "$DIR/u.data" <<'EOF'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    lines = z.read("recbole/dataset_example/ml-100k/ml-100k.inter").decode().splitlines()
assert lines[0].split("\t")[:4] == ["user_id:token", "item_id:token", "rating:float", "timestamp:float"], lines[0]
with open(out + ".tmp", "w") as f:
    for line in lines[1:]:
        user, item, rating, time = line.split("\t")
        f.write(f"{user}\t{item}\t{int(float(rating))}\t{int(float(time))}\n")
EOF
echo "$UDATA_SHA256  $DIR/u.data.tmp" | sha256sum --check --status ||
  { echo "error: the MovieLens 100k ratings taken from $WHEEL do not have the expected SHA-256" >&2; exit 1; }
mv "$DIR/u.data.tmp" "$DIR/u.data"
rm -f "$WHEEL"
