#!/usr/bin/env bash
# Copies the build machine's CPython (shared libpython) into $PREFIX; see recipe.yaml for why.
set -euo pipefail
src="${PACK_PYTHON_HOME:?PACK_PYTHON_HOME must name the CPython installation to repackage}"
ver=$("$src/bin/python3" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
mkdir -p "$PREFIX/bin" "$PREFIX/lib" "$PREFIX/include"
cp "$src/bin/python$ver" "$PREFIX/bin/python$ver"
ln -s "python$ver" "$PREFIX/bin/python3"
ln -s "python$ver" "$PREFIX/bin/python"
for f in "$src"/lib/libpython"$ver"*.so*; do cp -P "$f" "$PREFIX/lib/"; done
cp -r "$src/include/python$ver" "$PREFIX/include/"
# The standard library without test suites, caches, GUI/IDE modules, static libs or third-party packages.
tar -C "$src/lib" -cf - \
  --exclude="python$ver/site-packages/*" --exclude="python$ver/test" --exclude="python$ver/*/test" \
  --exclude="python$ver/*/tests" --exclude="python$ver/idlelib" --exclude="python$ver/tkinter" \
  --exclude="python$ver/turtledemo" --exclude="__pycache__" --exclude="*.a" --exclude="*.pyc" \
  --exclude="python$ver/lib-dynload/_tkinter*" --exclude="python$ver/lib-dynload/_test*" \
  "python$ver" | tar -C "$PREFIX/lib" -xf -
# Relative RUNPATHs so bin/python finds lib/libpython at any install path.
patchelf --set-rpath '$ORIGIN/../lib' "$PREFIX/bin/python$ver"
for so in "$PREFIX/lib/python$ver"/lib-dynload/*.so; do
  patchelf --set-rpath '$ORIGIN/../..' "$so"
done
# pip from the interpreter's bundled wheels (offline). SOURCE_DATE_EPOCH -> hash-based .pyc files.
export SOURCE_DATE_EPOCH=0
"$PREFIX/bin/python$ver" -s -m ensurepip --default-pip >/dev/null
rm -rf "$PREFIX/lib/python$ver/ensurepip/_bundled"
"$PREFIX/bin/python$ver" -c 'import sys; assert sys.prefix == sys.argv[1], (sys.prefix, sys.argv[1])' "$PREFIX"
