/* Prints the install prefix compiled into this binary, then the greeting file found through it.
 * The prefix is read through a volatile pointer: at -O2 gcc would otherwise fold strlen() of the
 * constant at compile time, and a relocated (shorter, NUL-padded) prefix would be printed wrongly. */
#include <stdio.h>
#include <string.h>

static const char *volatile prefix = HELLO_PREFIX;

int main(void) {
    char path[4096];
    size_t n = strlen(prefix);
    if (n + 40 > sizeof path) return 2;
    memcpy(path, prefix, n);
    strcpy(path + n, "/share/hello-prefix/greeting.txt");
    printf("prefix=%s\n", prefix);
    FILE *f = fopen(path, "r");
    if (!f) { fprintf(stderr, "hello-prefix: cannot open %s\n", path); return 1; }
    char line[256];
    if (fgets(line, sizeof line, f)) fputs(line, stdout);
    fclose(f);
    return 0;
}
