"""Prometheus exporter (``greenml export``): placeholder until the exporter lands."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=9464, help="TCP port for /metrics")


def main(args: argparse.Namespace) -> int:
    raise NotImplementedError
