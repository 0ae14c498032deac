package cli

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// flagDoc is one flag as a command's -h prints it.
type flagDoc struct {
	Name, Arg, Help string
}

// commandFlags runs this binary's `name -h` and reads the flags it
// prints: the help the man page and the completion are made of is the
// one the command itself gives, so they cannot drift apart. A command
// without flags refuses -h as an argument: it has none.
func commandFlags(name string) ([]flagDoc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, self, name, "-h")
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Run() // the exit status says nothing here; the output does
	return parseFlagUsage(out.String()), nil
}

// parseFlagUsage reads the flag package's usage text:
//
//	-config string
//	  	the peering's config file (default "/etc/clusterpeer/peering.yaml")
func parseFlagUsage(text string) []flagDoc {
	var flags []flagDoc
	for _, line := range strings.Split(text, "\n") {
		switch {
		case strings.HasPrefix(line, "  -"):
			// A one-letter flag's help follows on the same line, after a tab.
			head, help, _ := strings.Cut(strings.TrimPrefix(line, "  -"), "\t")
			name, arg, _ := strings.Cut(head, " ")
			flags = append(flags, flagDoc{Name: name, Arg: strings.TrimSpace(arg), Help: strings.TrimSpace(help)})
		case strings.HasPrefix(line, "    \t") && len(flags) > 0:
			f := &flags[len(flags)-1]
			f.Help = strings.TrimSpace(f.Help + " " + strings.TrimSpace(line))
		}
	}
	return flags
}

// document prints the man page (roff) or the bash completion of prog.
func document(what, prog, summary string, cmds map[string]Command, args []string) error {
	names := sortedNames(cmds)
	flags := map[string][]flagDoc{}
	for _, n := range names {
		f, err := commandFlags(n)
		if err != nil {
			return err
		}
		flags[n] = f
	}
	switch {
	case what == "manpage" && len(args) == 0:
		fmt.Print(manPage(prog, summary, BuildOf().Version, names, cmds, flags))
	case what == "completion" && len(args) == 1 && args[0] == "bash":
		fmt.Print(bashCompletion(prog, names, flags))
	case what == "completion":
		return fmt.Errorf("usage: %s completion bash", prog)
	default:
		return fmt.Errorf("usage: %s manpage", prog)
	}
	return nil
}

// roff escapes text for a man page line.
func roff(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

func manPage(prog, summary, version string, names []string, cmds map[string]Command, flags map[string][]flagDoc) string {
	var b strings.Builder
	fmt.Fprintf(&b, ".TH %s 8 \"\" \"clusterpeer %s\" \"System Administration\"\n", strings.ToUpper(prog), roff(version))
	fmt.Fprintf(&b, ".SH NAME\n%s \\- %s\n", prog, roff(summary))
	fmt.Fprintf(&b, ".SH SYNOPSIS\n.B %s\n.I command\n[\\fIflags\\fR]\n.br\n.B %s \\-\\-version\n", prog, prog)
	fmt.Fprintf(&b, ".SH DESCRIPTION\n%s: %s.\nThe configuration is the peering file, by default\n.IR /etc/clusterpeer/peering.yaml ;\n.B %s check\nvalidates it.\n", roff(prog), roff(summary), prog)
	b.WriteString(".SH COMMANDS\n")
	for _, n := range names {
		c := cmds[n]
		fmt.Fprintf(&b, ".SS \"%s %s\"\n%s.\n", prog, roff(c.Usage), roff(c.Help))
		for _, f := range flags[n] {
			fmt.Fprintf(&b, ".TP\n.B \\-\\-%s", roff(f.Name))
			if f.Arg != "" {
				fmt.Fprintf(&b, " \\fI%s\\fR", roff(f.Arg))
			}
			fmt.Fprintf(&b, "\n%s\n", roff(f.Help))
		}
	}
	b.WriteString(".SH SIGNALS\nSIGHUP re\\-reads the configuration (as the reload command does); SIGINT and SIGTERM stop the node.\n")
	b.WriteString(".SH FILES\n.TP\n.I /etc/clusterpeer/peering.yaml\nthe peering file\n.TP\n.I /run/clusterpeer/\nthe nodes' status sockets\n")
	fmt.Fprintf(&b, ".SH SEE ALSO\n.BR %s (8),\n.BR wg (8)\n", map[string]string{"demux": "tunnel", "tunnel": "demux"}[prog])
	return b.String()
}

func bashCompletion(prog string, names []string, flags map[string][]flagDoc) string {
	fn := "_clusterpeer_" + prog
	var b strings.Builder
	fmt.Fprintf(&b, "# bash completion for %s (%s completion bash)\n", prog, prog)
	fmt.Fprintf(&b, "%s() {\n\tlocal cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}\n", fn)
	fmt.Fprintf(&b, "\tif [ \"$COMP_CWORD\" -eq 1 ]; then\n\t\tCOMPREPLY=($(compgen -W '%s --version' -- \"$cur\"))\n\t\treturn\n\tfi\n", strings.Join(names, " "))
	b.WriteString("\tcase $prev in\n\t--config|--secret|--previous|--out|--private-key|--demux-bin) COMPREPLY=($(compgen -f -- \"$cur\")); return ;;\n")
	b.WriteString("\t--log-level) COMPREPLY=($(compgen -W 'debug info warn error' -- \"$cur\")); return ;;\n")
	b.WriteString("\t--log-format) COMPREPLY=($(compgen -W 'text json' -- \"$cur\")); return ;;\n\tesac\n")
	b.WriteString("\tcase ${COMP_WORDS[1]} in\n")
	for _, n := range names {
		var fs []string
		for _, f := range flags[n] {
			fs = append(fs, "--"+f.Name)
		}
		fmt.Fprintf(&b, "\t%s) COMPREPLY=($(compgen -W '%s' -- \"$cur\")) ;;\n", n, strings.Join(fs, " "))
	}
	fmt.Fprintf(&b, "\tesac\n}\ncomplete -F %s %s\n", fn, prog)
	return b.String()
}
