package kube

import (
	"maps"
	"os"
	"testing"

	"github.com/weftnet/weft/testenv"
)

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{
		`/run/netns/cni-1`:     `/run/netns/cni-1`,
		`/tmp/a\040b`:          `/tmp/a b`,
		`/tmp/tab\011x\134y`:   "/tmp/tab\tx\\y",
		`/tmp/short\04`:        `/tmp/short\04`,
		`/tmp/not-octal\09912`: `/tmp/not-octal\09912`,
	} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestReadMountinfo reads this process's own mounts: the root is there,
// and every entry has a mount point and a filesystem type.
func TestReadMountinfo(t *testing.T) {
	ms, err := readMountinfo(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	root := false
	for _, m := range ms {
		if m.point == "" || m.fstype == "" {
			t.Errorf("incomplete entry %+v", m)
		}
		root = root || m.point == "/"
	}
	if !root {
		t.Errorf("no / among %d mounts", len(ms))
	}
}

// TestOtherRunsNetNS: a sandbox's freed namespace number given to
// another run's named namespace is that run's, not a leftover; a name of
// this run, of no live run, or outside /run/netns is not excused.
func TestOtherRunsNetNS(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	for _, p := range []string{"wtmine", "wtother"} {
		if err := os.MkdirAll(testenv.RunDirOf(p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mounts := []mountEntry{
		{root: "net:[1]", point: "/run/netns/wtother-n0-p0", fstype: "nsfs"},
		{root: "net:[2]", point: "/run/netns/wtmine-n0-p0", fstype: "nsfs"},
		{root: "net:[3]", point: "/run/netns/cni-1234-5678", fstype: "nsfs"},
		{root: "net:[4]", point: "/run/netns/wtgone-n0", fstype: "nsfs"},
		{root: "net:[5]", point: "/tmp/x/wtother-n1", fstype: "nsfs"},
		{root: "net:[6]", point: "/run/netns/wtother-n1", fstype: "tmpfs"},
		{root: "net:[7]", point: "/var/run/netns/wtother-n2", fstype: "nsfs"},
	}
	got := otherRunsNetNS(mounts, "wtmine")
	want := map[string]bool{"net:[1]": true, "net:[7]": true}
	if !maps.Equal(got, want) {
		t.Fatalf("other runs' namespaces %v, want %v", got, want)
	}
}
