import importlib.util
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # namespace_host


if importlib.util.find_spec('ansible.module_utils.testing') is None:
    # ansible-core before 2.19 has no patch_module_args; the module tests use it,
    # and the oldest stage of tests/run runs them on the lowest ansible-core claimed.
    import contextlib
    import json
    import types

    from ansible.module_utils import basic
    from ansible.module_utils.common.text.converters import to_bytes

    @contextlib.contextmanager
    def patch_module_args(args=None):
        saved = basic._ANSIBLE_ARGS
        basic._ANSIBLE_ARGS = to_bytes(json.dumps({'ANSIBLE_MODULE_ARGS': args or {}}))
        try:
            yield
        finally:
            basic._ANSIBLE_ARGS = saved

    testing = types.ModuleType('ansible.module_utils.testing')
    testing.patch_module_args = patch_module_args
    sys.modules['ansible.module_utils.testing'] = testing
