// Package layers_test checks the import rule of docs/layers.md: a
// package imports only from its own layer or below.
package layers_test

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/clusterpeer/clusterpeer/"

// layers reads the table of docs/layers.md: package path -> layer.
func layers(t *testing.T) map[string]int {
	b, err := os.ReadFile("docs/layers.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("^\\| (\\d+) [^|]*\\| (.*) \\|$")
	path := regexp.MustCompile("`([^`]+)`")
	out := map[string]int{}
	for _, line := range strings.Split(string(b), "\n") {
		m := row.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		n, _ := strconv.Atoi(m[1])
		for _, p := range path.FindAllStringSubmatch(m[2], -1) {
			if _, dup := out[p[1]]; dup {
				t.Errorf("docs/layers.md places %s twice", p[1])
			}
			out[p[1]] = n
		}
	}
	if len(out) == 0 {
		t.Fatal("docs/layers.md: no layer table found")
	}
	return out
}

// imports returns, per package directory, the project packages its Go
// files (tests included) import.
func imports(t *testing.T) map[string]map[string]string {
	pkgs := map[string]map[string]string{} // dir -> imported package -> a file importing it
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); p != "." && (strings.HasPrefix(n, ".") || n == "testdata" || n == "bin") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), p, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		dir := filepath.ToSlash(filepath.Dir(p))
		if pkgs[dir] == nil {
			pkgs[dir] = map[string]string{}
		}
		for _, s := range f.Imports {
			if imp, _ := strconv.Unquote(s.Path.Value); strings.HasPrefix(imp, module) {
				pkgs[dir][strings.TrimPrefix(imp, module)] = p
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	delete(pkgs, ".") // this test
	return pkgs
}

func TestImportsGoDown(t *testing.T) {
	layer := layers(t)
	pkgs := imports(t)
	for dir, imps := range pkgs {
		l, ok := layer[dir]
		if !ok {
			t.Errorf("package %s is in no layer of docs/layers.md", dir)
			continue
		}
		switch filepath.Base(dir) {
		case "util", "utils", "common", "helpers", "misc":
			t.Errorf("package %s: a name that says nothing of what flows through it", dir)
		}
		for imp, file := range imps {
			if il, ok := layer[imp]; ok && il > l {
				t.Errorf("%s (layer %d) imports %s (layer %d): imports go down only", file, l, imp, il)
			}
		}
	}
	for p := range layer {
		if pkgs[p] == nil {
			t.Errorf("docs/layers.md places %s, which does not exist", p)
		}
	}
}

// TestReadmeLayout: the README's layout table names every package.
func TestReadmeLayout(t *testing.T) {
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	for p := range imports(t) {
		if !strings.Contains(readme, "`"+p+"`") {
			t.Errorf("README.md: the layout table does not name %s", p)
		}
	}
}
