#!/usr/bin/env python3
"""Writes the seed corpus of hand-made hostile archives into corpus/ (run from fuzz/)."""
import tarfile, io, os, sys
SEP=b"\n--usmol-layer--\n"
def tar(entries):
    b=io.BytesIO()
    with tarfile.open(fileobj=b, mode='w', format=tarfile.GNU_FORMAT) as t:
        for e in entries:
            kind,name=e[0],e[1]
            ti=tarfile.TarInfo(name); ti.mtime=0; ti.mode=0o644
            data=b''
            if kind=='f': data=(e[2].encode() if isinstance(e[2],str) else e[2]) if len(e)>2 else b'x'; ti.size=len(data)
            elif kind=='d': ti.type=tarfile.DIRTYPE; ti.mode=0o755
            elif kind=='l': ti.type=tarfile.SYMTYPE; ti.linkname=e[2]
            elif kind=='h': ti.type=tarfile.LNKTYPE; ti.linkname=e[2]
            elif kind=='c': ti.type=tarfile.CHRTYPE; ti.devmajor=1; ti.devminor=3
            elif kind=='b': ti.type=tarfile.BLKTYPE; ti.devmajor=8; ti.devminor=0
            elif kind=='p': ti.type=tarfile.FIFOTYPE
            elif kind=='suid': ti.mode=0o4755; data=b's'; ti.size=1
            elif kind=='sgid': ti.mode=0o2755; data=b's'; ti.size=1
            elif kind=='sgiddir': ti.type=tarfile.DIRTYPE; ti.mode=0o2775
            t.addfile(ti, io.BytesIO(data) if data else None)
    v=b.getvalue()
    # drop the record padding after the end-of-archive blocks
    end=len(v)
    while end>1024 and v[end-512:end]==b'\0'*512: end-=512
    return v[:end]
common={
 'dotdot': [('f','../../escaped')],
 'dotdot_inner': [('d','a/'),('f','a/../../outside/victim')],
 'absolute': [('f','/etc/abs')],
 'symlink_up_write': [('l','usr/x','../../../..'),('f','usr/x/outside/victim')],
 'symlink_abs_write': [('l','out','/tmp'),('f','out/pwned')],
 'symlink_rel_write': [('l','out','../outside'),('f','out/victim','pwned')],
 'dir_then_symlink': [('d','d/'),('l','d','../outside'),('f','d/victim','pwned')],
 'file_over_symlink': [('l','link','../outside/victim'),('f','link','replaced')],
 'hardlink_up': [('h','h','../outside/victim')],
 'hardlink_abs': [('h','h','/etc/passwd')],
 'hardlink_via_symlink': [('l','l','../outside'),('h','h','l/victim')],
 'hardlink_to_symlink': [('l','l2','../outside/victim'),('h','h2','l2')],
 'duplicates': [('f','f','one'),('f','f','two'),('d','f/'),('f','f','three')],
 'file_then_dir': [('f','x'),('d','x/'),('f','x/y')],
 'devices': [('c','dev/null'),('b','dev/sda'),('p','run/fifo')],
 'setuid': [('suid','usr/bin/su'),('sgid','usr/bin/wall'),('sgiddir','var/mail/')],
 'symlink_loop': [('l','a','b'),('l','b','a'),('f','a/f')],
 'symlink_chain': [('l','a','b/c'),('d','b/'),('l','b/c','../..'),('f','a/x')],
 'plain': [('d','usr/'),('d','usr/bin/'),('f','usr/bin/tool','#!/bin/sh\n'),('l','usr/bin/t','tool'),('h','usr/bin/t2','usr/bin/tool')],
}
layers={
 'whiteout_dotdot': [[('f','.wh..')],],
 'whiteout_escape': [[('f','../.wh.outside')]],
 'whiteout_empty': [[('f','.wh.')]],
 'whiteout_through_symlink': [[('l','l','../outside')],[('f','l/.wh.victim')]],
 'opaque_through_symlink': [[('l','l','../outside')],[('f','l/.wh..wh..opq')]],
 'whiteout_repeated': [[('d','a/'),('f','a/x')],[('f','a/.wh.x'),('f','a/.wh.x'),('f','a/.wh..wh..opq'),('f','a/.wh..wh..opq')]],
 'whiteout_misplaced': [[('f','a/b')],[('f','a/b/.wh.c'),('f','.wh.a'),('f','a/new')]],
 'whiteout_same_layer': [[('f','d','2'),('f','.wh.d')]],
 'lower_symlink_then_write': [[('l','d','../outside')],[('f','d/victim','pwned')]],
 'lower_dir_replaced_by_symlink': [[('d','d/'),('f','d/f')],[('l','d','../outside')],[('f','d/victim','pwned')]],
}
out='corpus'
for n,e in common.items():
    data=tar(e)
    open(f'{out}/deb_extract/{n}','wb').write(data)
    open(f'{out}/oci_apply/{n}','wb').write(data)
for n,ls in layers.items():
    open(f'{out}/oci_apply/{n}','wb').write(SEP.join(tar(l) for l in ls))
    open(f'{out}/deb_extract/{n}','wb').write(tar([x for l in ls for x in l]))
