#!/usr/bin/env bash
# Build the package's messages (msg/*.msg) into the virtual environment given as $1 and lay
# it out as a ROS prefix for this package: the programs in lib/anytime_infer (their #! line
# names the venv's python), the ament index marker, share/anytime_infer/{package.xml,
# launch,config}; `AMENT_PREFIX_PATH=<venv>` then serves ros2 run / ros2 launch.
#
# The wheels' generated cmake files name the include directories of the machine that
# built them; they are rewritten once to this interpreter's and numpy's. The Python
# sources are not installed (INSTALL_PYTHON_SOURCES=OFF): the repo stays on sys.path
# through the editable install, and the generated anytime_infer/msg joins it through
# pkgutil.extend_path.
set -euo pipefail
venv=$(cd "$1" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
py=$venv/bin/python
export AMENT_PREFIX_PATH=$venv CMAKE_PREFIX_PATH=$venv

pyinc=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
npinc=$("$py" -c 'import numpy; print(numpy.get_include())')
{ grep -rlZ '/opt/python/cp311-cp311' "$venv"/share/*/cmake/*.cmake 2>/dev/null || true; } \
  | xargs -0 -r sed -i \
      -e "s|/opt/python/cp311-cp311/include/python3.11|$pyinc|g" \
      -e "s|/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include|$npinc|g"

build=$root/build/venv-msgs
mkdir -p "$root/build"
cmake -S "$root" -B "$build" -DCMAKE_INSTALL_PREFIX="$venv" -DINSTALL_PYTHON_SOURCES=OFF \
  -DPYTHON_SHEBANG="$py" -DPython3_EXECUTABLE="$py" -DBUILD_TESTING=OFF -Wno-dev >"$build.log" 2>&1 \
  || { tail -30 "$build.log"; exit 1; }
cmake --build "$build" -j2 >>"$build.log" 2>&1 || { tail -30 "$build.log"; exit 1; }
cmake --install "$build" >>"$build.log" 2>&1 || { tail -30 "$build.log"; exit 1; }

site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# The generated package shares its name with the repo's; both must extend one another.
cp "$root/anytime_infer/__init__.py" "$site/anytime_infer/__init__.py"
"$py" -c 'import anytime_infer; from anytime_infer.msg import DetectionArray' \
  || { echo 'messages were built but do not import' >&2; exit 1; }
for f in lib/anytime_infer/anytime_infer_node share/anytime_infer/launch/anytime_infer.launch.py \
    share/ament_index/resource_index/packages/anytime_infer; do
  [ -e "$venv/$f" ] || { echo "the ROS prefix lacks $f" >&2; exit 1; }
done
echo "messages built into $venv, a ROS prefix for anytime_infer"
