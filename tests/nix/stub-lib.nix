# A stand-in for nixpkgs' `lib`, implementing only what flake.nix, modules/ and nixos/ use, for
# tests/nix/eval.nix: CI has Nix but neither nixpkgs nor a network to fetch it. Each function does
# what nixpkgs' does for the arguments these files pass; the module-system parts (mkOption, mkIf,
# mkMerge, types) only record what they are given, and eval.nix resolves them itself.
let
  inherit (builtins) map filter length elemAt substring stringLength listToAttrs concatStringsSep
    typeOf replaceStrings;
in
rec {
  genAttrs = names: f: listToAttrs (map (n: { name = n; value = f n; }) names);
  nameValuePair = name: value: { inherit name value; };
  mapAttrs' = f: set: listToAttrs (map (n: f n set.${n}) (builtins.attrNames set));
  optional = cond: x: if cond then [ x ] else [ ];
  concatStringsSep = builtins.concatStringsSep;
  concatMapStringsSep = sep: f: list: builtins.concatStringsSep sep (map f list);
  hasPrefix = pre: s: substring 0 (stringLength pre) s == pre;
  removePrefix = pre: s:
    if hasPrefix pre s then substring (stringLength pre) (stringLength s - stringLength pre) s else s;
  # nixpkgs quotes unless the string is made of safe characters only; always quoting is equivalent
  # for a shell.
  escapeShellArg = s: "'${replaceStrings [ "'" ] [ "'\\''" ] (toString s)}'";
  escapeShellArgs = l: builtins.concatStringsSep " " (map escapeShellArg l);
  getLib = p: p.lib or p;
  literalExpression = text: { _type = "literalExpression"; inherit text; };

  # The real toSource refuses a root that is not a path with this message (lib/fileset); that
  # refusal is what broke every output when the flake passed `self`.
  fileset = {
    toSource = { root, fileset }:
      if typeOf root != "path" then
        throw "lib.fileset.toSource: `root` (${toString root}) is a string-like value, but it should be a path instead."
      else { outPath = "/nix/store/stub-source"; inherit root fileset; };
    unions = list: { _type = "fileset-union"; inherit list; };
  };

  mkOption = attrs: attrs // { _type = "option"; };
  mkEnableOption = name: { _type = "option"; default = false; description = "Whether to enable ${name}."; type = types.bool; };
  mkIf = condition: content: { _type = "if"; inherit condition content; };
  mkMerge = contents: { _type = "merge"; inherit contents; };
  types = {
    str = { name = "str"; };
    bool = { name = "bool"; };
    path = { name = "path"; };
    package = { name = "package"; };
    enum = values: { name = "enum"; inherit values; };
    listOf = t: { name = "listOf"; elemType = t; };
    nullOr = t: { name = "nullOr"; elemType = t; };
    ints.between = lo: hi: { name = "intBetween"; inherit lo hi; };
  };
}
