#!/usr/bin/env bash
# Fetches the test HBase's jars from Maven Central into a cache folder outside
# the repo and compiles the readiness probe; prints the lib folder's path.
# Idempotent: reuses the cache when pom.xml and the probe sources are unchanged.
#   CARRIER_HBASE_HOME  cache folder (default ~/.cache/carrier/hbase-<version>)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
version=$(sed -n 's:.*<hbase.version>\(.*\)</hbase.version>.*:\1:p' "$here/pom.xml" | head -n 1)
[ -n "$version" ] || { echo "fetch.sh: no <hbase.version> in $here/pom.xml" >&2; exit 1; }
home=${CARRIER_HBASE_HOME:-$HOME/.cache/carrier/hbase-$version}

command -v mvn >/dev/null || { echo "fetch.sh: mvn (Maven) is not installed" >&2; exit 1; }
command -v java >/dev/null || { echo "fetch.sh: java is not installed" >&2; exit 1; }

# What the cache was built from: a change to either rebuilds it.
stamp=$(cd "$here" && cat pom.xml $(find src -type f | sort) | sha256sum | cut -d' ' -f1)

is_fresh() {
  [ -f "$home/.stamp" ] && [ "$(cat "$home/.stamp")" = "$stamp" ] \
    && [ -f "$home/build/classes/carrier/hbase/Probe.class" ] \
    && compgen -G "$home/lib/hbase-server-*.jar" >/dev/null
}

mkdir -p "$home"
if ! is_fresh; then
  # One fetch at a time per cache folder (parallel test runs share it).
  exec 9>"$home/.lock"
  flock -w 900 9 || { echo "fetch.sh: timed out waiting for $home/.lock" >&2; exit 1; }
  if ! is_fresh; then
    echo "fetch.sh: fetching HBase $version into $home" >&2
    rm -rf "$home/lib" "$home/build" "$home/.stamp"
    started=$(date +%s)
    if ! mvn -B -Dstyle.color=never -f "$here/pom.xml" -Dhbase.home="$home" compile >"$home/fetch.log" 2>&1; then
      tail -n 40 "$home/fetch.log" >&2
      echo "fetch.sh: maven failed (whole log: $home/fetch.log)" >&2
      exit 1
    fi
    echo "fetch.sh: done in $(( $(date +%s) - started )) s, $(du -sh "$home/lib" | cut -f1) of jars" >&2
    echo "$stamp" > "$home/.stamp"
  fi
fi
echo "$home/lib"
