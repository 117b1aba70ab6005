// estargz_ref: the reference eStargz implementation (containerd/stargz-snapshotter's
// estargz package, as packaged by Debian) driven from the command line, so that the
// Python tests can check zerostart's writer and reader against it.
//
//	estargz_ref verify BLOB TOC_DIGEST   open BLOB, verify its TOC against TOC_DIGEST and
//	                                     every chunk against its chunkDigest; print JSON
//	                                     {name: {type, size, mode, linkName, sha256}}
//	estargz_ref build TAR BLOB CHUNK [PRIORITIZED...]
//	                                     convert a plain tar into eStargz; print JSON
//	                                     {tocDigest, diffID}
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
)

type fileInfo struct {
	Type     string `json:"type"`
	Size     int64  `json:"size"`
	Mode     int64  `json:"mode"`
	LinkName string `json:"linkName,omitempty"`
	SHA256   string `json:"sha256,omitempty"`
	Chunks   int    `json:"chunks,omitempty"`
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "estargz_ref: "+format+"\n", args...)
	os.Exit(1)
}

func verify(blobPath, tocDigest string) {
	f, err := os.Open(blobPath)
	if err != nil {
		fail("%v", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		fail("%v", err)
	}
	r, err := estargz.Open(io.NewSectionReader(f, 0, st.Size()))
	if err != nil {
		fail("open: %v", err)
	}
	dgst, err := digest.Parse(tocDigest)
	if err != nil {
		fail("bad digest %q: %v", tocDigest, err)
	}
	verifiers, err := r.VerifyTOC(dgst)
	if err != nil {
		fail("verify TOC: %v", err)
	}
	out := map[string]fileInfo{}
	var walk func(dir string, e *estargz.TOCEntry)
	walk = func(dir string, e *estargz.TOCEntry) {
		e.ForeachChild(func(base string, child *estargz.TOCEntry) bool {
			name := base
			if dir != "" {
				name = dir + "/" + base
			}
			info := fileInfo{Type: child.Type, Size: child.Size, Mode: child.Mode, LinkName: child.LinkName}
			if child.Type == "reg" {
				sr, err := r.OpenFile(name)
				if err != nil {
					fail("open %s: %v", name, err)
				}
				// every chunk against its own digest, as the snapshotter does before serving it;
				// the file's hash from the same reads (one ReadAt per chunk: the reader inflates
				// a chunk from its start on every call, so io.Copy's 32 KiB reads cost a chunk
				// each, 108 s for a 90 MB file in CI)
				h := sha256.New()
				for off := int64(0); off < child.Size; {
					ce, ok := r.ChunkEntryForOffset(name, off)
					if !ok {
						fail("%s: no chunk at %d", name, off)
					}
					v, err := verifiers.Verifier(ce)
					if err != nil {
						fail("%s: %v", name, err)
					}
					buf := make([]byte, ce.ChunkSize)
					n, err := sr.ReadAt(buf, ce.ChunkOffset)
					if err != nil && err != io.EOF {
						fail("%s: read chunk at %d: %v", name, ce.ChunkOffset, err)
					}
					if int64(n) != ce.ChunkSize {
						fail("%s: chunk at %d: read %d of %d bytes", name, ce.ChunkOffset, n, ce.ChunkSize)
					}
					h.Write(buf)
					if _, err := v.Write(buf); err != nil {
						fail("%v", err)
					}
					if !v.Verified() {
						fail("%s: chunk at %d fails its digest", name, ce.ChunkOffset)
					}
					info.Chunks++
					off = ce.ChunkOffset + ce.ChunkSize
				}
				info.SHA256 = hex.EncodeToString(h.Sum(nil))
			}
			out[name] = info
			if child.Type == "dir" {
				walk(name, child)
			}
			return true
		})
	}
	root, ok := r.Lookup("")
	if !ok {
		fail("no root directory")
	}
	walk("", root)
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail("%v", err)
	}
}

func build(tarPath, blobPath, chunk string, prioritized []string) {
	f, err := os.Open(tarPath)
	if err != nil {
		fail("%v", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		fail("%v", err)
	}
	chunkSize, err := strconv.Atoi(chunk)
	if err != nil {
		fail("bad chunk size %q", chunk)
	}
	opts := []estargz.Option{estargz.WithChunkSize(chunkSize)}
	if len(prioritized) > 0 {
		opts = append(opts, estargz.WithPrioritizedFiles(prioritized))
	}
	blob, err := estargz.Build(io.NewSectionReader(f, 0, st.Size()), opts...)
	if err != nil {
		fail("build: %v", err)
	}
	defer blob.Close()
	out, err := os.Create(blobPath)
	if err != nil {
		fail("%v", err)
	}
	if _, err := io.Copy(out, blob); err != nil {
		fail("write: %v", err)
	}
	if err := out.Close(); err != nil {
		fail("%v", err)
	}
	json.NewEncoder(os.Stdout).Encode(map[string]string{
		"tocDigest": blob.TOCDigest().String(),
		"diffID":    blob.DiffID().String(),
	})
}

func main() {
	if len(os.Args) >= 4 && os.Args[1] == "verify" {
		verify(os.Args[2], os.Args[3])
	} else if len(os.Args) >= 5 && os.Args[1] == "build" {
		build(os.Args[2], os.Args[3], os.Args[4], os.Args[5:])
	} else {
		fail("usage: estargz_ref verify BLOB TOC_DIGEST | build TAR BLOB CHUNK [PRIORITIZED...]")
	}
}
