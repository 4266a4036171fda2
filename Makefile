# Two commands on a fresh machine: `make demo` and `make test`. Both build the environment first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEBIAN_PACKAGES := xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 \
	libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 \
	libxcb-cursor0 libdbus-1-3 x11-utils libfontconfig1 libglib2.0-0

.PHONY: demo test env display

$(BIN)/napari-mine: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[all,testing]"
	touch $@

env: $(BIN)/napari-mine

# The virtual display napari's OpenGL canvas needs (Debian packages; skipped when xvfb-run is already there).
display:
	@command -v xvfb-run >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends $(DEBIAN_PACKAGES); }

demo: env
	$(BIN)/napari-mine demo --out demo_out

test: env display
	xvfb-run -a -s "-screen 0 1600x1000x24" $(BIN)/python -m pytest -ra --timeout=900
