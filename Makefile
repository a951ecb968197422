# Two commands on a fresh machine:  `make demo` (install, fine-tune, evaluate) and `make test`.
PY ?= python3
VENV ?= .venv
MIRROR ?= ../shared
RUN ?= runs/exp1
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export EDGESIGHT_MIRROR := $(abspath $(MIRROR))

.PHONY: install demo test lint tflite-runtime device-venv services test-bundles rootfs wheelhouses clean

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

demo: install
	$(BIN)/edgesight train --out $(RUN)
	$(BIN)/edgesight eval $(RUN)/best.pt --coco $(RUN)/val.json --save-predictions $(RUN)/val-predictions.json \
		--pr-curve $(RUN)/pr.png
	$(BIN)/edgesight predict $(RUN)/best.pt $(MIRROR)/datasets/roadsign_kaggle_stop/images/road160.png \
		$(MIRROR)/datasets/coco128/images/val2017/000000000139.jpg --out $(RUN)/annotated

# The device install, as a user gets it on a Raspberry Pi: numpy, OpenCV, both runtimes, the daemon's
# libraries, and no torch. Daemon tests run `edgesight run` from here in a subprocess.
.venv-device/bin/edgesight: setup.cfg pyproject.toml
	$(PY) -m venv .venv-device
	.venv-device/bin/pip install -q --upgrade pip
	.venv-device/bin/pip install -q -e '.[device,tflite,onnx]'
	touch $@
device-venv: .venv-device/bin/edgesight

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

test: install tflite-runtime device-venv services test-bundles rootfs wheelhouses
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .venv-tflite runs build *.egg-info
