-- PowerDNS Recursor Lua config (rendered by run.sh): the block list as a local RPZ file.
-- Entries are `x CNAME .` and `*.x CNAME .` (NXDOMAIN for the name and its subdomains).
rpzFile("@GEN@/rpz.zone", {policyName="bench"})
