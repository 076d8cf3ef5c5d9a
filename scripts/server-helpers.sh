# Sourced by the test scripts that start `ember serve`s on loopback
# (client-tests.sh, web-tests.sh): a venv kept per requirements file, free
# ports, a readiness wait, and every started server stopped on exit.
# Sets `cache`, `logs` and `pids`.

cache="${EMBER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ember}"
logs=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# ensure_venv DIR REQUIREMENTS: (re)makes DIR when the requirements changed.
ensure_venv() {
  local venv="$1" reqs="$2"
  if ! cmp -s "$reqs" "$venv/requirements.txt" 2>/dev/null; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$reqs"
    cp "$reqs" "$venv/requirements.txt"
  fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# wait_ready PORT: until /health answers 200 (a minute at most).
wait_ready() {
  for _ in $(seq 1 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/health")" = 200 ] && return 0
    sleep 0.2
  done
  echo "server on port $1 did not become ready:"; cat "$logs"/*.log; return 1
}
