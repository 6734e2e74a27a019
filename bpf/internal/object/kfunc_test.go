package object

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"testing"

	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
)

// TestBTFFuncIDs builds a BTF blob with a type of every kind that carries
// data after its header, functions before and after them, and checks that
// btfFuncIDs finds each function's ID as cilium/ebpf numbers it.
func TestBTFFuncIDs(t *testing.T) {
	u32 := &btf.Int{Name: "u32", Size: 4}
	u64 := &btf.Int{Name: "u64", Size: 8}
	st := &btf.Struct{Name: "pair", Size: 8, Members: []btf.Member{{Name: "a", Type: u32}, {Name: "b", Type: u32, Offset: 32}}}
	proto := &btf.FuncProto{Return: u32, Params: []btf.FuncParam{{Name: "x", Type: u32}, {Name: "p", Type: &btf.Pointer{Target: st}}}}
	// Tags become DECL_TAG types after the function.
	first := &btf.Func{Name: "first_fn", Type: proto, Linkage: btf.GlobalFunc, Tags: []string{"tag"}}
	v := &btf.Var{Name: "v", Type: u64, Linkage: btf.GlobalVar}
	types := []btf.Type{
		first,
		&btf.Array{Type: u32, Index: u32, Nelems: 4},
		&btf.Union{Name: "either", Size: 4, Members: []btf.Member{{Name: "a", Type: u32}}},
		&btf.Enum{Name: "colour", Size: 4, Values: []btf.EnumValue{{Name: "red"}, {Name: "green", Value: 1}}},
		&btf.Enum{Name: "big", Size: 8, Signed: false, Values: []btf.EnumValue{{Name: "huge", Value: 1 << 40}}},
		&btf.Typedef{Name: "pair_t", Type: st},
		&btf.Datasec{Name: ".data", Size: 8, Vars: []btf.VarSecinfo{{Type: v, Size: 8}}},
		&btf.Float{Name: "double", Size: 8},
		&btf.Fwd{Name: "later"},
		&btf.Func{Name: "last_fn", Type: proto, Linkage: btf.StaticFunc},
		&btf.Func{Name: "u32", Type: proto}, // a function named like a type
	}
	b, err := btf.NewBuilder(types, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := b.Marshal(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := btf.LoadSpecFromReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]uint32{}
	for _, name := range []string{"first_fn", "last_fn"} {
		var fn *btf.Func
		if err := spec.TypeByName(name, &fn); err != nil {
			t.Fatal(err)
		}
		id, err := spec.TypeID(fn)
		if err != nil {
			t.Fatal(err)
		}
		want[name] = uint32(id)
	}
	got, err := btfFuncIDs(raw, map[string]bool{"first_fn": true, "last_fn": true, "pair": true, "missing": true})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) || got["first_fn"] != want["first_fn"] || got["last_fn"] != want["last_fn"] {
		t.Fatalf("btfFuncIDs = %v, want %v (the struct and the missing name left out)", got, want)
	}

	// The pass ends once every name has its first function: a later
	// function of the same name does not count, and what follows is not
	// read. first_fn is the first type (ID 1, at the section's start);
	// the second is made unreadable.
	b, err = btf.NewBuilder(append(types, &btf.Func{Name: "first_fn", Type: proto, Linkage: btf.GlobalFunc}), nil)
	if err != nil {
		t.Fatal(err)
	}
	dup, err := b.Marshal(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := btfFuncIDs(dup, map[string]bool{"first_fn": true}); err != nil || got["first_fn"] != want["first_fn"] {
		t.Errorf("first_fn twice: %v %v, want the first, %d", got, err, want["first_fn"])
	}
	if want["first_fn"] != 1 {
		t.Fatalf("first_fn is type %d, want 1", want["first_fn"])
	}
	cut := bytes.Clone(raw)
	types0 := le32(cut[4:]) + le32(cut[8:])
	cut[types0+12+7] = 0x1f // type 2's kind: unknown
	if got, err := btfFuncIDs(cut, map[string]bool{"first_fn": true}); err != nil || got["first_fn"] != 1 {
		t.Errorf("found before an unreadable type: %v %v, want first_fn at 1 and no error", got, err)
	}
	if _, err := btfFuncIDs(cut, map[string]bool{"first_fn": true, "last_fn": true}); err == nil {
		t.Errorf("a name not found before an unreadable type: no error")
	}

	for name, bad := range map[string][]byte{
		"short":         raw[:10],
		"magic":         append([]byte{0, 0}, raw[2:]...),
		"out of bounds": raw[:len(raw)-1],
	} {
		if _, err := btfFuncIDs(bad, map[string]bool{"first_fn": true}); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// TestKernelFuncIDs checks the running kernel's BTF: the conntrack kfuncs
// weft calls get the IDs cilium/ebpf would give them.
func TestKernelFuncIDs(t *testing.T) {
	if _, err := os.Stat(vmlinuxBTF); errors.Is(err, os.ErrNotExist) {
		t.Skip("kernel has no BTF (CONFIG_DEBUG_INFO_BTF)")
	}
	kernel, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{"bpf_skb_ct_lookup": true, "bpf_ct_release": true}
	got, err := kernelFuncIDs(names)
	if err != nil {
		t.Fatal(err)
	}
	for name := range names {
		var fn *btf.Func
		if err := kernel.TypeByName(name, &fn); errors.Is(err, btf.ErrNotFound) {
			if _, ok := got[name]; ok {
				t.Errorf("%s: found at %d, not in the kernel", name, got[name])
			}
			continue
		} else if err != nil {
			t.Fatal(err)
		}
		id, err := kernel.TypeID(fn)
		if err != nil {
			t.Fatal(err)
		}
		if got[name] != uint32(id) {
			t.Errorf("%s: id %d, cilium/ebpf says %d", name, got[name], id)
		}
	}
}

// TestResolveKfuncs checks weft's object after resolveKfuncs: every call
// to a kfunc in vmlinux and every check that it exists carry its kernel
// ID and no longer the reference cilium/ebpf would resolve again.
func TestResolveKfuncs(t *testing.T) {
	cs, err := LoadWeft()
	if err != nil {
		t.Fatal(err)
	}
	before := map[string]int{}
	for _, p := range cs.Programs {
		for i := range p.Instructions {
			if name, ok := kfuncRef(cs.Types, &p.Instructions[i]); ok {
				before[name]++
			}
		}
	}
	if before["bpf_skb_ct_lookup"] == 0 || before["bpf_ct_release"] == 0 {
		t.Fatalf("object's kfunc uses: %v, want both conntrack kfuncs", before)
	}
	names := map[string]bool{}
	for n := range before {
		names[n] = true
	}
	ids, err := kernelFuncIDs(names)
	if errors.Is(err, os.ErrNotExist) {
		t.Skip("kernel has no BTF (CONFIG_DEBUG_INFO_BTF)")
	}
	if err != nil {
		t.Fatal(err)
	}
	resolveKfuncs(cs)
	calls, loads := 0, 0
	for pname, p := range cs.Programs {
		for i := range p.Instructions {
			ins := &p.Instructions[i]
			if name, ok := kfuncRef(cs.Types, ins); ok && ids[name] != 0 {
				t.Errorf("%s: instruction %d still refers to %s", pname, i, name)
			}
			for _, id := range ids {
				switch {
				case ins.IsKfuncCall() && ins.Constant == int64(id):
					if ins.Offset != 0 || ins.Reference() != "" {
						t.Errorf("%s: instruction %d: %v (reference %q)", pname, i, ins, ins.Reference())
					}
					calls++
				case ins.OpCode.IsDWordLoad() && ins.Src == asm.R0 && ins.Constant == int64(id):
					loads++
				}
			}
		}
	}
	if len(ids) > 0 && (calls == 0 || loads == 0) {
		t.Errorf("resolved %d calls and %d existence checks of %v", calls, loads, ids)
	}
}

func le32(b []byte) uint32 { return binary.LittleEndian.Uint32(b) }
