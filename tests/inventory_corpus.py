"""Inventories of the kinds users write, for the differential test against ansible-inventory.

Each case: files (relative path -> text) and the sources given to ``-i``. Hosts without an
edgekit_target are there on purpose: edgekit refuses them (its one documented difference).
"""
from __future__ import annotations

from typing import Dict, List, Tuple

Case = Tuple[Dict[str, str], List[str]]

CORPUS: Dict[str, Case] = {
    "ini_groups_children_ranges": ({"hosts.ini": """\
# edge fleet
lab-pc ansible_connection=local edgekit_target=x86-avx2 edgekit_path=/tmp/lab

[pis]
pi-[01:03] ansible_user=pi
pi-special ansible_host=10.0.0.99 ansible_port=2222 edgekit_target=raspberry-pi-4  # inline comment
r[a:c]-[1:2]
n[0:10:5]

[pis:vars]
edgekit_target=rpi
ansible_python_interpreter=/usr/bin/python3.11
edgekit_path="/opt/edge kit"

[jetsons]
orin ansible_host=10.0.1.5 ansible_ssh_private_key_file=~/.ssh/jetson ansible_python_interpreter=auto_silent

[jetsons:vars]
edgekit_target=jetson-orin-nano

[fleet:children]
pis
jetsons

[fleet:vars]
edgekit_path=/srv/edgekit
ansible_user=edge

[all:vars]
ansible_port=22
"""}, ["hosts.ini"]),

    "ini_header_comments": ({"hosts": """\
[fleet]   # the production pis
pi1 ansible_host=192.168.1.10
pi2
; a semicolon comment
[fleet:vars]   # shared
edgekit_target = raspberry-pi-5
greeting = hello # not a comment for Ansible: a string
[lab:children]  # nested
fleet
"""}, ["hosts"]),

    "ini_host_port": ({"inventory.ini": """\
[fleet]
pi1.example.com:2222
10.0.0.5:2201 ansible_user=admin
[fe80::1]:2200
pi[1:2].lan:2300
plain.example.com
[fleet:vars]
edgekit_target=rpi
"""}, ["inventory.ini"]),

    "ini_legacy_names": ({"hosts": """\
[all:vars]
ansible_port=22
ansible_user=fleetuser
edgekit_target=raspberry-pi-5

[fleet]
pi1 ansible_ssh_port=2222 ansible_ssh_user=legacy ansible_host=10.0.0.1
pi2:2300 ansible_ssh_host=10.9.9.9 ansible_host=10.0.0.2
pi3 ansible_private_key_file=~/.ssh/modern ansible_ssh_private_key_file=~/.ssh/legacy

[fleet:vars]
ansible_ssh_port=2400

[other]
pi4 ansible_port=2500 ansible_user=hostmodern

[other:vars]
ansible_ssh_port=2600
ansible_ssh_user=grouplegacy
"""}, ["hosts"]),

    "ini_group_priority": ({"hosts.ini": """\
[a_first]
dev1
[z_last]
dev1
[a_first:vars]
edgekit_target=x86-avx2
edgekit_path=/from/a
[z_last:vars]
edgekit_target=rpi
ansible_group_priority=0
[prio]
dev2
[zz]
dev2
[prio:vars]
edgekit_target=rpi
ansible_group_priority=10
[zz:vars]
edgekit_target=jetson
[parent:children]
child
[child]
dev3
[parent:vars]
edgekit_target=x86
ansible_group_priority=99
[child:vars]
edgekit_target=jetson-nano
"""}, ["hosts.ini"]),

    "vars_dirs_beside_ini": ({
        "inv/hosts": """\
[pis]
pi1
pi2 ansible_port=2201
[jetsons]
orin
[fleet:children]
pis
jetsons
[pis:vars]
edgekit_path=/inline/pis
""",
        "inv/host_vars/pi1.yml": "ansible_host: 192.168.50.1\nansible_port: 2222\n",
        "inv/host_vars/pi2.json": '{"ansible_host": "192.168.50.2", "ansible_port": 2202}\n',
        "inv/host_vars/orin/10-net.yml": "ansible_host: 192.168.60.1\n",
        "inv/host_vars/orin/20-user.yaml": "ansible_user: orinuser\nansible_host: 192.168.60.2\n",
        "inv/host_vars/orin/.hidden.yml": "ansible_host: 6.6.6.6\n",
        "inv/host_vars/orin/backup.yml~": "ansible_host: 7.7.7.7\n",
        "inv/group_vars/all.yml": "ansible_user: fleetuser\nedgekit_path: /srv/fleet\nedgekit_target: raspberry-pi-5\n",
        "inv/group_vars/jetsons": "edgekit_target: jetson-orin-nano\n",
        "inv/group_vars/fleet/main.yml": "edgekit_path: /srv/fleet-group\n",
        "inv/group_vars/fleet/sub/extra.json": '{"ansible_python_interpreter": "/usr/bin/python3.9"}\n',
        "inv/group_vars/pis": "edgekit_target: rpi\n",
        "inv/group_vars/pis.yml": "edgekit_target: jetson\n",  # shadowed: the name without extension wins
    }, ["inv/hosts"]),

    "yaml_no_extension": ({"hosts": """\
all:
  vars:
    edgekit_target: raspberry-pi-5
  children:
    fleet:
      hosts:
        pi1:
          ansible_host: 10.1.0.1
        pi2:
"""}, ["hosts"]),

    "yaml_full": ({"inventory.yml": """\
all:
  vars:
    ansible_user: edge
    edgekit_path: /srv/edgekit
  hosts:
    lab-pc:
      ansible_connection: local
      edgekit_target: x86-avx2
  children:
    fleet:
      vars:
        edgekit_path: /opt/fleet
      children:
        pis:
          hosts:
            pi-[1:2]:
            pi-special:2222:
              ansible_host: 10.0.0.99
              edgekit_target: raspberry-pi-4
          vars:
            edgekit_target: raspberry-pi-5
            ansible_python_interpreter: /usr/bin/python3.11
        jetsons:
          hosts: orin
          vars:
            edgekit_target: jetson-orin-nano
    empty_group:
"""}, ["inventory.yml"]),

    "unicode_names": ({"hosts.ini": """\
[café]
café-01 ansible_host=10.2.0.1
機械-1
[café:vars]
edgekit_target=rpi
""", "more.yml": """\
all:
  children:
    ñandú:
      hosts:
        ñandú-2:
          edgekit_target: jetson
"""}, ["hosts.ini", "more.yml"]),

    "scalar_types": ({"hosts.yml": """\
fleet:
  hosts:
    pi1:
      ansible_user: 1000
      ansible_port: "2222"
      edgekit_target: rpi
      edgekit_path: 12345
    pi2:
      ansible_user: yes
      edgekit_target: rpi
      ansible_python_interpreter: auto
""", "extra.ini": """\
[extra]
pi3 ansible_user=1000 ansible_port="2223" edgekit_target=rpi edgekit_path='/a b/c'
[extra:vars]
ansible_python_interpreter=auto_legacy
"""}, ["hosts.yml", "extra.ini"]),

    "nesting_and_duplicates": ({"hosts": """\
top1
top1 ansible_user=second
[l1:children]
l2
[l2:children]
l3a
l3b
[l3a]
dup
[l3b]
dup
late
late:2999
[l1:vars]
edgekit_target=x86
edgekit_path=/l1
[l2:vars]
edgekit_path=/l2
[l3a:vars]
edgekit_target=rpi
[l3b:vars]
edgekit_target=jetson
[other]
dup ansible_host=10.3.0.1
top1
[other:vars]
edgekit_target=x86-avx2
"""}, ["hosts"]),

    "ungrouped_and_order": ({"hosts": """\
alone edgekit_target=rpi
moved edgekit_target=rpi
[ungrouped]
explicit edgekit_target=rpi
[fleet]
moved
[vars_first:vars]
edgekit_target=jetson
[parent:children]
kid
[vars_first]
vf1
[kid]
k1 edgekit_target=rpi
"""}, ["hosts"]),

    "multiple_sources": ({
        "a/hosts.ini": "[fleet]\npi1 ansible_host=10.4.0.1\npi2\n[fleet:vars]\nedgekit_target=rpi\n",
        "a/group_vars/fleet.yml": "ansible_user: from_a\nedgekit_path: /a\n",
        "b/hosts.yml": "fleet:\n  hosts:\n    pi2:\n      ansible_host: 10.4.0.2\n    pi3:\n",
        "b/group_vars/fleet.yml": "ansible_user: from_b\n",
        "b/host_vars/pi1.yml": "ansible_port: 2444\n",
    }, ["a/hosts.ini", "b/hosts.yml"]),

    "directory_source": ({
        "inv/10-base.ini": "[fleet]\npi1\npi2 ansible_host=10.5.0.2\n",
        "inv/20-extra.yml": "fleet:\n  hosts:\n    pi3:\n      ansible_port: 2233\n",
        "inv/30-noext": "[jetsons]\norin ansible_host=10.5.1.1\n",
        "inv/README.md": "not an inventory\n",
        "inv/notes.txt": "[bogus]\nnot-a-host\n",
        "inv/group_vars/all.yml": "edgekit_target: rpi\n",
        "inv/group_vars/jetsons.yml": "edgekit_target: jetson-orin-nano\nansible_user: nvidia\n",
        "inv/host_vars/pi1.yml": "ansible_host: 10.5.0.1\n",
    }, ["inv"]),

    "file_vars_beat_inline": ({
        "hosts": "[pis]\npi1 edgekit_target=inline-host\n[pis:vars]\nedgekit_path=/inline/pis\nansible_user=inline\n",
        "group_vars/all.yml": "edgekit_path: /file/all\n",
        "host_vars/pi1": "edgekit_target: raspberry-pi-5\n",
    }, ["hosts"]),

    "priority_in_group_vars_file": ({
        "hosts": "[aa]\nh1\n[zz]\nh1\n[aa:vars]\nedgekit_target=from-aa\n[zz:vars]\nedgekit_target=from-zz\n",
        # Ansible reads ansible_group_priority only where the group is defined, not from group_vars/
        "group_vars/zz.yml": "ansible_group_priority: 0\n",
        "group_vars/aa.yml": "edgekit_path: /aa\n",
    }, ["hosts"]),

    "json_and_yaml_shapes": ({"hosts.json": """{"fleet": {"hosts": {"j1": {"ansible_host": "10.8.0.1", "ansible_port": 2200}, "j2": null},
           "vars": {"edgekit_target": "rpi", "ansible_group_priority": 5}},
 "other": {"hosts": {"j2": {}}, "vars": {"edgekit_target": "jetson"}}}
""", "more.yaml": """defaults: &defaults
  vars:
    edgekit_target: x86-avx2
    ansible_user: base
lab:
  <<: *defaults
  hosts: solo
edge:
  hosts:
    e1:
      ansible_port: null
      ansible_connection: ssh
      edgekit_target: rpi
"""}, ["hosts.json", "more.yaml"]),

    "ini_all_sections_and_odd_values": ({"hosts": """[all:children]
web-servers
[web-servers]
w1 edgekit_path=/srv/x#y ansible_user='quoted user'
w2 edgekit_path="/srv/with space" ansible_python_interpreter="/opt/py 3/bin/python"
[web-servers:vars]
edgekit_target = rpi   # a comment, literal_eval fails: kept in the value
ansible_ssh_user=True
[all:vars]
edgekit_path=/srv/a#b
"""}, ["hosts"]),

    "ini_text_in_yaml_file": ({"hosts.yaml": "[fleet]\npi1 edgekit_target=rpi ansible_host=10.9.0.1\n"}, ["hosts.yaml"]),

    "no_target_refused": ({"hosts": """\
[fleet]
pi1 edgekit_target=rpi
db1 ansible_host=10.6.0.1
"""}, ["hosts"]),
}
