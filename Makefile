# Two commands on a fresh machine:  `make demo` (install, fine-tune, export, run the daemon) and `make test`.
PY ?= python3
VENV ?= .venv
MIRROR ?= ../shared
RUN ?= runs/exp1
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export EDGESIGHT_MIRROR := $(abspath $(MIRROR))

.PHONY: install demo test lint tflite-runtime device-venv window-venv services test-bundles rootfs wheelhouses clean

$(BIN)/edgesight: setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[train,export,dev,device]'
	touch $@

install: $(BIN)/edgesight

# tflite-runtime 2.14 (the Raspberry Pi wheel) needs numpy<2, so it lives in its own venv; the tests
# run the exported files in it through a subprocess.
.venv-tflite/bin/python:
	$(PY) -m venv .venv-tflite
	.venv-tflite/bin/pip install -q "tflite-runtime==2.14.0" "numpy<2" opencv-python-headless pytest
tflite-runtime: .venv-tflite/bin/python

# The main job end to end: fine-tune, export the INT8 TFLite bundle through its accuracy gate, compose the
# stop-sign clip, then run the daemon (edgesight demo, recording) over a real pedestrian video and the clip to
# their ends. Each run folder holds annotated.mp4, events.jsonl, metrics.prom, status.json and SUMMARY.md.
DEMO ?= runs/demo
BUNDLE ?= bundles/yolox-nano-tflite-int8
DEMO_FILES := annotated.mp4 events.jsonl metrics.prom status.json SUMMARY.md
demo: install
	$(BIN)/edgesight train --out $(RUN)
	$(BIN)/edgesight export $(RUN)/best.pt --format tflite --precision int8 --out $(BUNDLE)
	$(BIN)/edgesight demo-clip --out $(DEMO)/stop-signs.mp4
	$(BIN)/edgesight demo --bundle $(BUNDLE) --source $(MIRROR)/videos/vtest.avi --record $(DEMO)/vtest \
		--http 127.0.0.1:0 --no-browser
	$(BIN)/edgesight demo --bundle $(BUNDLE) --source $(DEMO)/stop-signs.mp4 --record $(DEMO)/stop-signs \
		--http 127.0.0.1:0 --no-browser
	@for run in vtest stop-signs; do for f in $(DEMO_FILES); do \
		test -s $(DEMO)/$$run/$$f || { echo "make demo: $(DEMO)/$$run/$$f is missing"; exit 1; }; done; done
	@cat $(DEMO)/vtest/SUMMARY.md $(DEMO)/stop-signs/SUMMARY.md
	@echo
	@echo "Watch it live (the page opens in your browser; Ctrl-C stops):"
	@echo "  . $(VENV)/bin/activate"
	@echo "  edgesight demo --source $(MIRROR)/videos/vtest.avi --bundle $(BUNDLE)"
	@echo "  edgesight demo --source $(DEMO)/stop-signs.mp4     # composed from still photos, not real video"
	@echo "  edgesight demo --source 0                          # your webcam"

# The device install, as a user gets it on a Raspberry Pi: numpy, OpenCV, both runtimes, the daemon's
# libraries, and no torch. Daemon tests run `edgesight run` from here in a subprocess.
.venv-device/bin/edgesight: setup.cfg pyproject.toml
	$(PY) -m venv .venv-device
	.venv-device/bin/pip install -q --upgrade pip
	.venv-device/bin/pip install -q -e '.[device,tflite,onnx]'
	touch $@
device-venv: .venv-device/bin/edgesight

# `edgesight demo --window` needs an OpenCV with a GUI: the device install with the headless wheel swapped
# for opencv-contrib-python (Qt), as docs/demo.md tells a user. The window test runs it under Xvfb.
.venv-window/bin/edgesight: setup.cfg pyproject.toml
	$(PY) -m venv .venv-window
	.venv-window/bin/pip install -q --upgrade pip
	.venv-window/bin/pip install -q -e '.[device,tflite]'
	v=$$(.venv-window/bin/python -c 'import importlib.metadata as m; print(m.version("opencv-contrib-python-headless"))') \
		&& .venv-window/bin/pip uninstall -q -y opencv-contrib-python-headless \
		&& .venv-window/bin/pip install -q "opencv-contrib-python==$$v"
	touch $@
window-venv: .venv-window/bin/edgesight

# Real services the tests talk to (mosquitto, chromium, sshd, ffmpeg, qemu for arm64): Debian's packages.
services:
	@missing=$$(grep -v '^#' .ci/debian-packages.txt | xargs -n1 sh -c 'dpkg -s "$$0" >/dev/null 2>&1 || echo "$$0"'); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

# Bundles the device tests run (the zero-shot models exported through the real pipeline, small gate set);
# built once, reused until the code that writes them changes.
TEST_BUNDLES := runs/test-bundles
$(TEST_BUNDLES)/.done: $(BIN)/edgesight
	$(BIN)/python -m tests.make_test_bundles $(TEST_BUNDLES)
	touch $@
test-bundles: $(TEST_BUNDLES)/.done

# Board stand-ins for the deploy proofs (tests/rootfs.py): a Debian arm64 root filesystem run under
# qemu-aarch64 (binfmt_misc), and a Debian with systemd + sshd booted by systemd-nspawn. Built once from
# Debian's packages (about 5 and 2.5 minutes cold), cached in ~/.cache/edgesight/rootfs by a hash of
# what goes in; later runs reuse them in a second.
rootfs: services install
	$(BIN)/python -m tests.rootfs arm64 device

# Wheelhouses of the device install: aarch64 for the Raspberry Pi (LiteRT, and tflite-runtime 2.14 with
# numpy<2), x86_64 for the container boards. Downloaded from the package index here, so that the tests
# install with --no-index, as an offline board does.
WHEELHOUSES := runs/wheelhouse
$(WHEELHOUSES)/rpi/wheelhouse.json: setup.cfg | $(BIN)/edgesight
	$(BIN)/edgesight wheelhouse --target rpi --out $(@D)
$(WHEELHOUSES)/rpi-tflite-runtime/wheelhouse.json: setup.cfg | $(BIN)/edgesight
	$(BIN)/edgesight wheelhouse --target rpi --runtime tflite_runtime --out $(@D)
$(WHEELHOUSES)/rpi-x86_64/wheelhouse.json: setup.cfg | $(BIN)/edgesight
	$(BIN)/edgesight wheelhouse --target rpi --arch x86_64 --out $(@D)
wheelhouses: $(WHEELHOUSES)/rpi/wheelhouse.json $(WHEELHOUSES)/rpi-tflite-runtime/wheelhouse.json \
	$(WHEELHOUSES)/rpi-x86_64/wheelhouse.json

test: install tflite-runtime device-venv window-venv services test-bundles rootfs wheelhouses
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .venv-tflite .venv-window runs build *.egg-info
