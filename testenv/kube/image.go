package kube

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Images are built here without a registry: an OCI image archive (one
// uncompressed layer) that `ctr images import` loads into each node's
// containerd. The base is Debian's busybox-static (its shell, cp, mv,
// mount, grep and sysctl are what the DaemonSet's init containers use);
// weft's image adds the static weft binaries where deploy/Containerfile
// puts them.

// BusyboxPath is where Debian's busybox-static installs its binary.
const BusyboxPath = "/bin/busybox"

// PodImage is the image of the demo's pods and of every pod sandbox (the
// "pause" image): busybox whose default command waits until SIGTERM.
const PodImage = "localhost/weft-testenv/busybox:1"

// podCmd is PodImage's default command: a shell that exits on SIGTERM (a
// bare sleep as PID 1 ignores it and every delete would wait for the
// grace period).
var podCmd = []string{"/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done"}

type layerFile struct {
	name string // path inside the image, without leading slash
	mode int64
	data []byte
	link string // symlink target
	dir  bool
}

// busyboxLayer is busybox-static with a symlink per applet, and the
// directories a container root needs.
func busyboxLayer() ([]layerFile, error) {
	bin, err := os.ReadFile(BusyboxPath)
	if err != nil {
		return nil, fmt.Errorf("read %s (install Debian's busybox-static): %w", BusyboxPath, err)
	}
	out, err := exec.Command(BusyboxPath, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("list busybox applets: %w", err)
	}
	files := []layerFile{}
	for _, d := range []string{"bin", "dev", "etc", "proc", "run", "sys", "tmp", "usr", "usr/local", "usr/local/bin", "usr/local/share", "usr/local/share/weft", "var"} {
		files = append(files, layerFile{name: d, mode: 0o755, dir: true})
	}
	files = append(files, layerFile{name: "bin/busybox", mode: 0o755, data: bin})
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" || strings.Contains(applet, "/") {
			continue
		}
		files = append(files, layerFile{name: "bin/" + applet, mode: 0o777, link: "busybox"})
	}
	files = append(files,
		layerFile{name: "etc/passwd", mode: 0o644, data: []byte("root:x:0:0:root:/:/bin/sh\n")},
		layerFile{name: "etc/group", mode: 0o644, data: []byte("root:x:0:\n")})
	return files, nil
}

// WeftImageFiles returns the files of weft's image: busybox plus the
// static weft binaries from binDir and the conflist, at the paths
// deploy/Containerfile gives them.
func weftLayer(binDir, conflist string) ([]layerFile, error) {
	files, err := busyboxLayer()
	if err != nil {
		return nil, err
	}
	for _, b := range []string{"weft-controller", "weft-agent", "weft-bgp", "weftctl", "weft-cni"} {
		data, err := os.ReadFile(filepath.Join(binDir, b))
		if err != nil {
			return nil, fmt.Errorf("read %s for the image: %w", b, err)
		}
		files = append(files, layerFile{name: "usr/local/bin/" + b, mode: 0o755, data: data})
	}
	c, err := os.ReadFile(conflist)
	if err != nil {
		return nil, fmt.Errorf("read conflist for the image: %w", err)
	}
	files = append(files, layerFile{name: "usr/local/share/weft/10-weft.conflist", mode: 0o644, data: c})
	return files, nil
}

func tarLayer(files []layerFile) ([]byte, error) {
	sort.SliceStable(files, func(i, j int) bool { return files[i].name < files[j].name })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(0, 0)
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: f.mode, ModTime: mtime, Format: tar.FormatPAX}
		switch {
		case f.dir:
			h.Typeflag, h.Name = tar.TypeDir, f.name+"/"
		case f.link != "":
			h.Typeflag, h.Linkname = tar.TypeSymlink, f.link
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("write layer: %w", err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(f.data); err != nil {
				return nil, fmt.Errorf("write layer: %w", err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("write layer: %w", err)
	}
	return buf.Bytes(), nil
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    map[string]string `json:"platform,omitempty"`
}

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// writeImage writes an OCI image archive (oci-layout, index.json, blobs)
// of one layer to path, named ref, with the given entrypoint and command.
func writeImage(path, ref string, files []layerFile, entrypoint, cmd []string) error {
	layer, err := tarLayer(files)
	if err != nil {
		return err
	}
	config, err := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"config": map[string]any{
			"Env":        []string{"PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin"},
			"Entrypoint": entrypoint,
			"Cmd":        cmd,
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{digestOf(layer)}},
	})
	if err != nil {
		return err
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        descriptor{MediaType: "application/vnd.oci.image.config.v1+json", Digest: digestOf(config), Size: int64(len(config))},
		"layers":        []descriptor{{MediaType: "application/vnd.oci.image.layer.v1.tar", Digest: digestOf(layer), Size: int64(len(layer))}},
	})
	if err != nil {
		return err
	}
	tag := ref[strings.LastIndex(ref, ":")+1:]
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"manifests": []descriptor{{
			MediaType: "application/vnd.oci.image.manifest.v1+json",
			Digest:    digestOf(manifest),
			Size:      int64(len(manifest)),
			Annotations: map[string]string{
				"io.containerd.image.name":          ref,
				"org.opencontainers.image.ref.name": tag,
			},
			Platform: map[string]string{"architecture": "amd64", "os": "linux"},
		}},
	})
	if err != nil {
		return err
	}
	var out []layerFile
	out = append(out,
		layerFile{name: "oci-layout", mode: 0o644, data: []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		layerFile{name: "index.json", mode: 0o644, data: index},
		layerFile{name: "blobs", mode: 0o755, dir: true},
		layerFile{name: "blobs/sha256", mode: 0o755, dir: true})
	for _, b := range [][]byte{layer, config, manifest} {
		out = append(out, layerFile{name: "blobs/sha256/" + strings.TrimPrefix(digestOf(b), "sha256:"), mode: 0o644, data: b})
	}
	archive, err := tarLayer(out)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, archive, 0o644); err != nil {
		return fmt.Errorf("write image %s: %w", path, err)
	}
	return nil
}
