"""What the parent and its workers share.

Pickling, large buffers, start methods, fresh interpreters' command lines, the fork server and its
messages, process names, worker environment, and the interpreter's exit and fork hooks. Never
imports ``_pool`` or the parent's front ends (``tests/test_layout.py``).
"""
