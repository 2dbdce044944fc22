#!/usr/bin/env bash
# Copies the build machine's CPython (shared libpython) into $PREFIX; see recipe.yaml for why.
set -euo pipefail
src="${PACK_PYTHON_HOME:?PACK_PYTHON_HOME must name the CPython installation to repackage}"
ver=$("$src/bin/python3" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
mkdir -p "$PREFIX/bin" "$PREFIX/lib" "$PREFIX/include"
cp "$src/bin/python$ver" "$PREFIX/bin/python$ver"
ln -s "python$ver" "$PREFIX/bin/python3"
ln -s "python$ver" "$PREFIX/bin/python"
# libpython and the stdlib where this interpreter keeps them (pyenv, setup-python: <home>/lib).
libdir=$("$src/bin/python$ver" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
stdlib=$("$src/bin/python$ver" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
found=0
for f in "$libdir"/libpython"$ver"*.so*; do
  [ -e "$f" ] || continue
  cp -P "$f" "$PREFIX/lib/"
  found=1
done
if [ "$found" = 0 ]; then
  echo "python recipe: no libpython$ver*.so in $libdir: this interpreter has no shared libpython" >&2
  exit 1
fi
cp -r "$src/include/python$ver" "$PREFIX/include/"
# The standard library without test suites, caches, GUI/IDE modules, static libs or third-party packages.
tar -C "$(dirname "$stdlib")" -cf - \
  --exclude="python$ver/site-packages/*" --exclude="python$ver/test" --exclude="python$ver/*/test" \
  --exclude="python$ver/*/tests" --exclude="python$ver/idlelib" --exclude="python$ver/tkinter" \
  --exclude="python$ver/turtledemo" --exclude="__pycache__" --exclude="*.a" --exclude="*.pyc" \
  --exclude="python$ver/lib-dynload/_tkinter*" --exclude="python$ver/lib-dynload/_test*" \
  "python$ver" | tar -C "$PREFIX/lib" -xf -
# Relative RUNPATHs so bin/python finds lib/libpython at any install path ($ORIGIN is literal here).
# shellcheck disable=SC2016
patchelf --set-rpath '$ORIGIN/../lib' "$PREFIX/bin/python$ver"
for so in "$PREFIX/lib/python$ver"/lib-dynload/*.so; do
  # shellcheck disable=SC2016
  patchelf --set-rpath '$ORIGIN/../..' "$so"
done
# pip from the interpreter's bundled wheels (offline). SOURCE_DATE_EPOCH -> hash-based .pyc files.
export SOURCE_DATE_EPOCH=0
"$PREFIX/bin/python$ver" -s -m ensurepip --default-pip >/dev/null
# 3.11's ensurepip also installs setuptools. Like conda-forge's python, this package ships pip only: a
# setuptools here would be clobbered (and the env called broken by conda-pack) by any pip lock naming it.
"$PREFIX/bin/python$ver" -s -m pip uninstall -q -y setuptools >/dev/null 2>&1 || true
rm -rf "$PREFIX/lib/python$ver/site-packages/setuptools" "$PREFIX/lib/python$ver/site-packages/pkg_resources" \
  "$PREFIX/lib/python$ver/site-packages/_distutils_hack" "$PREFIX/lib/python$ver/site-packages/distutils-precedence.pth"
rm -rf "$PREFIX/lib/python$ver/ensurepip/_bundled"
"$PREFIX/bin/python$ver" -c 'import sys; assert sys.prefix == sys.argv[1], (sys.prefix, sys.argv[1])' "$PREFIX"
