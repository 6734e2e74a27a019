package object

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

// vmlinuxBTF is where the kernel publishes its own BTF (CONFIG_DEBUG_INFO_BTF).
const vmlinuxBTF = "/sys/kernel/btf/vmlinux"

// resolveKfuncs points the programs' calls to kernel functions (kfuncs,
// such as conntrack's bpf_skb_ct_lookup) at their BTF IDs in vmlinux,
// found by one pass over the kernel's BTF, and leaves any kfunc it does not
// find there to cilium/ebpf.
//
// cilium/ebpf resolves a kfunc by decoding the kernel's whole BTF (5.5 MB,
// over 100,000 types), indexing every name, and inflating the kfunc's type
// with every type it reaches (struct nf_conn reaches much of the kernel):
// 35–60 ms of CPU at every agent start, the largest single piece of a cold
// start. The pass here reads only type headers and compares names of
// functions. A kfunc that is not in vmlinux (a module's, or missing) keeps
// its instructions as the ELF reader left them, so cilium/ebpf searches the
// modules and, for a weak kfunc, disables the call as before. The kernel's
// verifier checks every kfunc call against the kernel's own prototype
// either way. So does a kernel BTF this pass cannot read (no file, a
// layout it does not know): the instructions stay for cilium/ebpf.
func resolveKfuncs(cs *ebpf.CollectionSpec) {
	names := map[string]bool{}
	for _, p := range cs.Programs {
		for i := range p.Instructions {
			if name, ok := kfuncRef(cs.Types, &p.Instructions[i]); ok {
				names[name] = true
			}
		}
	}
	if len(names) == 0 {
		return
	}
	ids, err := kernelFuncIDs(names)
	if err != nil {
		return
	}
	for _, p := range cs.Programs {
		for i := range p.Instructions {
			ins := &p.Instructions[i]
			name, ok := kfuncRef(cs.Types, ins)
			if !ok || ids[name] == 0 {
				continue
			}
			// A fresh instruction drops the ELF reader's kfunc metadata
			// and reference, which would send cilium/ebpf to the kernel's
			// BTF again; the source line and function info stay.
			// A call keeps its form with offset 0 (vmlinux); a dword
			// load of the kfunc's address (bpf_ksym_exists) loads the
			// ID as a constant, non-zero: the kfunc exists.
			out := asm.Instruction{OpCode: ins.OpCode, Dst: ins.Dst, Constant: int64(ids[name])}
			if ins.IsKfuncCall() {
				out.Src = asm.PseudoKfuncCall
			}
			if src := ins.Source(); src != nil {
				out = out.WithSource(src)
			}
			if sym := ins.Symbol(); sym != "" {
				out = out.WithSymbol(sym)
			}
			if fn := btf.FuncMetadata(ins); fn != nil {
				out = btf.WithFuncMetadata(out, fn)
			}
			*ins = out
		}
	}
}

// kernelFuncIDs is btfFuncIDs of the kernel's BTF, mapped rather than
// read: sysfs hands out the file a page per read.
func kernelFuncIDs(names map[string]bool) (map[string]uint32, error) {
	f, err := os.Open(vmlinuxBTF)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	raw, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_PRIVATE)
	if err != nil {
		return nil, fmt.Errorf("map %s: %w", vmlinuxBTF, err)
	}
	defer unix.Munmap(raw)
	return btfFuncIDs(raw, names)
}

// kfuncRef reports whether ins calls or loads the address of a kernel
// function the object declares extern (a kfunc), and which.
func kfuncRef(types *btf.Spec, ins *asm.Instruction) (string, bool) {
	name := ins.Reference()
	if name == "" || types == nil || !(ins.IsKfuncCall() || (ins.OpCode.IsDWordLoad() && ins.Src == 0)) {
		return "", false
	}
	var fn *btf.Func
	if types.TypeByName(name, &fn) != nil || fn.Linkage != btf.ExternFunc {
		return "", false
	}
	return name, true
}

// BTF kinds, as in the kernel's include/uapi/linux/btf.h.
const (
	btfKindInt       = 1
	btfKindArray     = 3
	btfKindStruct    = 4
	btfKindUnion     = 5
	btfKindEnum      = 6
	btfKindFunc      = 12
	btfKindFuncProto = 13
	btfKindVar       = 14
	btfKindDatasec   = 15
	btfKindDeclTag   = 17
	btfKindEnum64    = 19
	btfKindMax       = 19
)

// btfFuncIDs returns the type IDs of the functions (BTF_KIND_FUNC) among
// names in raw, a little-endian base BTF blob such as
// /sys/kernel/btf/vmlinux (weft's programs are little-endian only); names
// not found are left out. Only the header of each type is read, and the
// name of each function compared where it starts. A name's first function
// counts, as libbpf takes it, and the pass ends once every name has one:
// the kfuncs weft calls sit about halfway through the kernel's 125,000
// types, so that halves the pass (3.2 → 1.6 ms here).
func btfFuncIDs(raw []byte, names map[string]bool) (map[string]uint32, error) {
	const hdrLen = 24
	le := binary.LittleEndian
	if len(raw) < hdrLen {
		return nil, errors.New("btf header: short")
	}
	if le.Uint16(raw) != 0xeb9f {
		return nil, errors.New("btf header: bad magic or not little-endian")
	}
	hl := le.Uint32(raw[4:])
	typeOff, typeLen := le.Uint32(raw[8:]), le.Uint32(raw[12:])
	strOff, strLen := le.Uint32(raw[16:]), le.Uint32(raw[20:])
	end := uint64(len(raw))
	if uint64(hl) < hdrLen || uint64(hl)+uint64(typeOff)+uint64(typeLen) > end || uint64(hl)+uint64(strOff)+uint64(strLen) > end {
		return nil, errors.New("btf header: sections out of bounds")
	}
	types := raw[hl+typeOff : hl+typeOff+typeLen]
	strs := raw[hl+strOff : hl+strOff+strLen]
	want := make([]string, 0, len(names))
	for n := range names {
		want = append(want, n)
	}
	out := make(map[string]uint32, len(names))
	id := uint32(1) // 0 is void
	for off := 0; off < len(types); id++ {
		if len(types)-off < 12 {
			return nil, fmt.Errorf("btf type %d: short", id)
		}
		nameOff, info := le.Uint32(types[off:]), le.Uint32(types[off+4:])
		kind, vlen := (info>>24)&0x1f, int(info&0xffff)
		if kind == 0 || kind > btfKindMax {
			return nil, fmt.Errorf("btf type %d: unknown kind %d", id, kind)
		}
		if kind == btfKindFunc {
			for _, n := range want {
				if _, found := out[n]; !found && cstringIs(strs, nameOff, n) {
					out[n] = id
				}
			}
			if len(out) == len(want) {
				return out, nil
			}
		}
		off += 12
		switch kind {
		case btfKindInt, btfKindVar, btfKindDeclTag:
			off += 4
		case btfKindArray:
			off += 12
		case btfKindStruct, btfKindUnion, btfKindDatasec, btfKindEnum64:
			off += 12 * vlen
		case btfKindEnum, btfKindFuncProto:
			off += 8 * vlen
		}
	}
	return out, nil
}

// cstringIs reports whether the NUL-terminated string at off in strs is s.
func cstringIs(strs []byte, off uint32, s string) bool {
	end := uint64(off) + uint64(len(s))
	return end < uint64(len(strs)) && strs[end] == 0 && string(strs[off:end]) == s
}
