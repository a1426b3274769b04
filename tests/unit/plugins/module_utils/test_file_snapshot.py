"""Files the modules write keep their SELinux context, also when the original is put back.

This machine runs no SELinux, so the kernel's labelling is modelled, from its documented rules:
- a new file takes the type of the directory it is created in, unless policy says otherwise
  (SELinux Notebook, "Computing Security Contexts": files inherit the parent directory's type);
- rename(2) moves the inode, and the label is the inode's: a file renamed over another keeps
  its own label, not the replaced file's;
- matchpathcon(3) gives a path's default context from the policy's file_contexts.
AnsibleModule.atomic_move is run for real against that model, through ansible's selinux binding.
"""

import json
import os

import pytest

from ansible.module_utils import basic
from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vpnguard.killswitch.plugins.module_utils import file_snapshot

ETC = 'system_u:object_r:etc_t:s0'
NET_CONF = 'system_u:object_r:net_conf_t:s0'
UNIT = 'system_u:object_r:systemd_unit_file_t:s0'
ADMIN_SET = 'system_u:object_r:admin_custom_t:s0'


class SELinuxModel(object):
    """Labels by inode, as the kernel keeps them; the policy's defaults by file name."""

    def __init__(self, root):
        self.root = root
        self.labels = {}
        self.file_contexts = {'resolv.conf': NET_CONF, 'vpnguard-killswitch.service': UNIT}

    def _inode(self, path):
        st = os.lstat(path)
        return st.st_dev, st.st_ino

    def label(self, path):
        inode = self._inode(path)
        if inode not in self.labels:
            parent = os.path.dirname(path)
            self.labels[inode] = ETC if parent == self.root else self.label(parent)
        return self.labels[inode]

    # The calls ansible.module_utils.basic makes on its selinux binding.
    def is_selinux_enabled(self):
        return 1

    def is_selinux_mls_enabled(self):
        return 1

    def matchpathcon(self, path, mode):
        return [0, self.file_contexts.get(os.path.basename(path), ETC)]

    def lgetfilecon_raw(self, path):
        return [0, self.label(path)]

    def lsetfilecon(self, path, context):
        self.labels[self._inode(path)] = context
        return 0


@pytest.fixture
def selinux(tmp_path, monkeypatch):
    root = str(tmp_path)
    model = SELinuxModel(root)
    monkeypatch.setattr(basic, 'selinux', model, raising=False)
    monkeypatch.setattr(basic, 'HAVE_SELINUX', True)
    return model


@pytest.fixture
def module(monkeypatch):
    try:
        from ansible.module_utils.testing import patch_module_args
    except ImportError:  # ansible-core before 2.19
        monkeypatch.setattr(basic, '_ANSIBLE_ARGS', json.dumps({'ANSIBLE_MODULE_ARGS': {}}).encode())
        return AnsibleModule(argument_spec={})
    with patch_module_args({}):
        return AnsibleModule(argument_spec={})


def labelled_file(selinux, path, content, context, mode=0o644):
    with open(path, 'w') as f:
        f.write(content)
    os.chmod(path, mode)
    selinux.lsetfilecon(path, context)


def test_a_rewritten_file_keeps_its_context_and_the_mode_asked(tmp_path, selinux, module):
    path = str(tmp_path / 'resolv.conf')
    labelled_file(selinux, path, 'nameserver 198.51.100.53\n', NET_CONF, 0o600)
    file_snapshot.write_text(path, 'nameserver 192.0.2.1\n', 0o644, module)
    assert selinux.label(path) == NET_CONF, 'a plain rename leaves the directory\'s etc_t'
    assert os.stat(path).st_mode & 0o7777 == 0o644


def test_the_control_a_plain_rename_loses_the_context(tmp_path, selinux):
    # Proves the model can fail: without the module, as the files were written before.
    path = str(tmp_path / 'resolv.conf')
    labelled_file(selinux, path, 'nameserver 198.51.100.53\n', NET_CONF)
    file_snapshot.write_text(path, 'nameserver 192.0.2.1\n')
    assert selinux.label(path) == ETC


def test_a_file_replacing_a_symlink_or_new_gets_the_policy_default(tmp_path, selinux, module):
    path = str(tmp_path / 'resolv.conf')
    os.symlink('/run/systemd/resolve/stub-resolv.conf', path)
    file_snapshot.write_text(path, 'nameserver 192.0.2.1\n', 0o644, module)
    assert not os.path.islink(path) and selinux.label(path) == NET_CONF

    unit = str(tmp_path / 'vpnguard-killswitch.service')
    assert file_snapshot.sync({unit: '[Unit]\n'}, False, module=module) == [unit]
    assert selinux.label(unit) == UNIT and os.stat(unit).st_mode & 0o7777 == 0o644


def test_restore_puts_back_bytes_mode_owner_and_the_context_the_admin_had(tmp_path, selinux, module):
    path = str(tmp_path / 'resolv.conf')
    labelled_file(selinux, path, 'nameserver 198.51.100.53\n', ADMIN_SET, 0o640)
    os.chown(path, 0, 4)
    entry = file_snapshot.capture(path, module)
    assert entry['selinux'] == ADMIN_SET

    file_snapshot.write_text(path, 'nameserver 192.0.2.1\n', 0o644, module)
    selinux.lsetfilecon(path, ETC)  # relabelled meanwhile (restorecon, another tool)
    file_snapshot.restore(json.loads(json.dumps(entry)), module)  # as saved in the manifest
    st = os.stat(path)
    assert (open(path).read(), st.st_mode & 0o7777, st.st_uid, st.st_gid) == ('nameserver 198.51.100.53\n', 0o640, 0, 4)
    assert selinux.label(path) == ADMIN_SET


def test_saved_state_stays_readable_by_root_only(tmp_path, module):
    path = str(tmp_path / 'state' / 'manifest.json')
    file_snapshot.save(path, {'a': 1}, module)
    file_snapshot.save(path, {'a': 2}, module)
    assert file_snapshot.load_json(path) == {'a': 2} and os.stat(path).st_mode & 0o7777 == 0o600
